"""The Ray engine on a real multi-node Ray cluster started here (a head and worker nodes on this machine,
``ray.cluster_utils.Cluster``), driven through the real CLI (``anomalymatch score --engine ray``):

- real GZ1 galaxy images give the same scores (max |diff| <= 1e-6) and the same top-100 as the local engine;
- a worker node killed mid-job: the job still completes, every image exactly once;
- the driver killed (SIGKILL) mid-job: rerunning the command resumes, nothing is scored twice;
- a job submitted to the service's job runner with ``engine="ray"`` reports progress and finishes;
- deploy/rayjob.yaml's entrypoint, with this machine's paths and cluster address, runs the job.
"""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray engine needs Ray Data: pip install 'anomalymatch[ray]'")

from serving.bulk import BulkJob, read_manifest, read_scores  # noqa: E402
from tests.helpers.rayjob import entrypoint_argv, with_options  # noqa: E402
from tests.helpers.serving import export_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GZ1_ZIP = ROOT.parent / "shared" / "data" / "gz1" / "images.zip"
N_IMAGES = 3000
VERSION = "7"  # the version the tiny model carries in its metadata, which `--model m.onnx` reports
NODE = {"num_cpus": 2, "object_store_memory": 200 * 1024**2}


@pytest.fixture(scope="module")
def gz1(tmp_path_factory) -> Path:
    """The first N_IMAGES real GZ1 JPEGs (423 x 423) as a stored zip, plus one corrupt member and a text file."""
    if not GZ1_ZIP.is_file():
        pytest.fail(f"the GZ1 test data is missing: {GZ1_ZIP} (see ../shared/data/README.md)")
    path = tmp_path_factory.mktemp("gz1") / "gz1.zip"
    with zipfile.ZipFile(GZ1_ZIP) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        names = sorted(n for n in src.namelist() if n.lower().endswith(".jpeg"))[:N_IMAGES]
        for name in names:
            dst.writestr(name, src.read(name))
        dst.writestr("zz_corrupt.jpeg", b"\xff\xd8\xff" + b"\x00" * 64)
        dst.writestr("notes.txt", "not an image")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("ray_model") / "m.onnx", seed=3, size=64, version="7")


@pytest.fixture(scope="module")
def local(gz1, model, tmp_path_factory) -> dict:
    """The local engine's result over the same zip: {id: score}, the top-100 ids, the error ids."""
    from anomalymatch.scoring import OnnxScorer

    out = tmp_path_factory.mktemp("local") / "out"
    progress = BulkJob([gz1], out, OnnxScorer(model, spinning=False), VERSION, top_n=100).run()
    assert progress.status == "done"
    table = read_scores(out).to_pydict()
    return {"scores": dict(zip(table["id"], table["score"])), "top": _top(out), "errors": _errors(out)}


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, each with 2 CPUs and a 200 MB object store."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args=NODE)
    c.add_node(**NODE)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _top(out: Path) -> list[str]:
    with (out / "top.csv").open() as fh:
        return [row["id"] for row in csv.DictReader(fh)]


def _errors(out: Path) -> set[str]:
    with (out / "errors.csv").open() as fh:
        return {row["id"] for row in csv.DictReader(fh)}


def _score_cmd(cluster, gz1: Path, model: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "anomalymatch.cli",
        "score",
        "--engine",
        "ray",
        "--address",
        cluster.address,
        "--source",
        str(gz1),
        "--out",
        str(out),
        "--model",
        str(model),
        "--top",
        "100",
        "--quiet",
    ]


def _env(tmp: Path) -> dict:
    return {**os.environ, "ANOMALYMATCH_HOME": str(tmp / "home"), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def _run(cmd: list[str], env: dict, timeout: float = 240) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _start_and_wait_for_commits(cmd: list[str], env: dict, out: Path, shards: int, timeout: float = 180):
    """Start the CLI and return it once ``shards`` shards are committed (the job still running)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while True:
        if (out / "manifest.json").is_file():
            manifest = read_manifest(out)
            if len(manifest["shards"]) >= shards:
                assert manifest["progress"]["status"] == "running", "the job ended before it could be interrupted"
                return proc, manifest
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {shards} commits in time: {proc.stdout.read()[-3000:]}")
        time.sleep(0.05)


def _assert_exactly_once_and_equal(out: Path, local: dict) -> None:
    table = read_scores(out).to_pydict()
    ids = table["id"]
    errors = _errors(out)
    assert len(ids) == len(set(ids)) == N_IMAGES, "every image in exactly one score row"
    assert not set(ids) & errors and errors == local["errors"] == {"zz_corrupt.jpeg", "notes.txt"}
    scores = dict(zip(ids, table["score"]))
    assert scores.keys() == local["scores"].keys()
    assert max(abs(scores[i] - local["scores"][i]) for i in ids) <= 1e-6
    assert set(table["model_version"]) == {VERSION}


def test_ray_engine_on_two_nodes_equals_the_local_engine(cluster, gz1, model, local, tmp_path):
    out = tmp_path / "out"
    _run(_score_cmd(cluster, gz1, model, out), _env(tmp_path))
    _assert_exactly_once_and_equal(out, local)
    assert _top(out) == local["top"] and len(local["top"]) == 100
    manifest = read_manifest(out)
    assert manifest["model_version"] == VERSION and manifest["progress"]["status"] == "done"
    starts = [(s["start"], s["end"]) for s in manifest["shards"]]
    assert len(starts) > 2 and starts[0][0] == 0 and all(a[1] == b[0] for a, b in zip(starts, starts[1:]))


def test_driver_killed_mid_job_resumes_without_scoring_twice(cluster, gz1, model, local, tmp_path):
    out, env = tmp_path / "out", _env(tmp_path)
    cmd = _score_cmd(cluster, gz1, model, out)
    proc, _ = _start_and_wait_for_commits(cmd, env, out, shards=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = read_manifest(out)
    assert before["progress"]["status"] == "running" and before["progress"]["scored"] < N_IMAGES
    kept = {
        s["file"]: hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() for s in before["shards"] if s["rows"]
    }
    _run(cmd, env)
    after = read_manifest(out)
    assert after["shards"][: len(before["shards"])] == before["shards"]  # committed shards kept, not redone
    assert all(hashlib.sha256((out / f).read_bytes()).hexdigest() == h for f, h in kept.items())
    _assert_exactly_once_and_equal(out, local)
    assert _top(out) == local["top"]


def test_worker_node_killed_mid_job_still_completes_exactly_once(cluster, gz1, model, local, tmp_path):
    doomed = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    out, env = tmp_path / "out", _env(tmp_path)
    proc, _ = _start_and_wait_for_commits(_score_cmd(cluster, gz1, model, out), env, out, shards=1)
    cluster.remove_node(doomed)  # its raylet, object store and workers (decode tasks, scoring actors) die
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-3000:]
    assert read_manifest(out)["progress"]["status"] == "done"
    _assert_exactly_once_and_equal(out, local)
    assert _top(out) == local["top"]


def test_service_job_runner_runs_a_ray_job_with_progress(cluster, gz1, model, local, tmp_path):
    """``BulkJobs.submit(engine="ray")`` (what ``/bulk_submit`` calls) on the cluster; an unknown engine is a 400."""
    from anomalymatch.scoring import OnnxScorer
    from serving.jobs import BulkJobs
    from serving.live_model import LoadedModel
    from serving.uploads import RequestError

    loaded = LoadedModel(OnnxScorer(model), VERSION, model)
    jobs = BulkJobs(tmp_path / "bulk", [str(gz1.parent)], 64, 1, 65_536, 100, ray_address=cluster.address)
    with pytest.raises(RequestError) as bad:
        jobs.submit([str(gz1)], loaded, job_id="x", engine="spark")
    assert bad.value.status == 400 and "'ray'" in bad.value.message
    jobs.submit([str(gz1)], loaded, job_id="survey", engine="ray")
    seen = []
    deadline = time.monotonic() + 240
    while (status := jobs.status("survey"))["status"] in ("queued", "running"):
        seen.append(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "done", status
    assert status["done"] == status["total"] == N_IMAGES + 2 and status["eta_s"] == 0.0
    assert any(s["eta_s"] is not None and s["images_per_second"] > 0 for s in seen)
    jobs.close()
    _assert_exactly_once_and_equal(tmp_path / "bulk" / "survey", local)


def test_the_rayjob_entrypoint_runs_the_job_on_the_local_cluster(cluster, gz1, model, local, tmp_path):
    """The command deploy/rayjob.yaml runs on the head, with local paths for its volumes and this cluster."""
    argv = with_options(
        entrypoint_argv(),
        {
            "--address": [cluster.address],
            "--source": [str(gz1)],
            "--out": [str(tmp_path / "out")],
            "--model": [str(model)],
            "--tracking-uri": [f"sqlite:///{tmp_path / 'mlflow.db'}"],
            "--data-dir": [str(tmp_path / "data")],
            "--top": ["100"],
        },
    )
    assert argv[:2] == ["anomalymatch", "score"] and "--engine" in argv and "--quiet" in argv
    _run([sys.executable, "-m", "anomalymatch.cli", *argv[1:]], _env(tmp_path))
    _assert_exactly_once_and_equal(tmp_path / "out", local)

"""The real service: ``bentoml serve`` as a subprocess on 127.0.0.1 over a real SQLite MLflow registry.

Scores match the registered ONNX model within 1e-4; every kind of bad request gets a 4xx and the
next good request succeeds; bulk jobs run over server-side sources under the data roots only; the
alias moving to another version is picked up without failing requests in flight. A CLI bulk job
killed with SIGKILL resumes and its shards hold every image exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from anomalymatch.config import load_config
from anomalymatch.loader import load_images
from anomalymatch.scoring import OnnxScorer
from serving import client
from serving.bulk import read_manifest, read_scores
from serving.launch import start_service
from tests.helpers.images import fits_bomb_gz
from tests.helpers.serving import shared_registry, write_pngs

pytestmark = pytest.mark.slow
ALIAS = "integration-live"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = shared_registry(tmp_path_factory)
    from mlflow import MlflowClient

    MlflowClient(reg.tracking_uri).set_registered_model_alias("anomalymatch", ALIAS, "1")
    return reg


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_pngs(root / "pngs", 48, size=50)
    return root


def _expected(registry, version, folder, ids=None):
    scorer = OnnxScorer(registry.onnx_paths[version])
    loaded = load_images(folder, scorer.spec, ids=ids, workers=1)
    return dict(zip(loaded.ids, scorer.score(loaded.images).tolist()))


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_service_end_to_end(registry, images, image_dir, tmp_path):
    config = load_config(
        None,
        {
            "data_dir": str(tmp_path / "home"),
            "tracking.tracking_uri": registry.tracking_uri,
            "serving.model": f"models:/anomalymatch@{ALIAS}",
            "serving.port": 0,
            "serving.reload_interval_s": 0.5,
            "serving.max_images_per_request": 32,
            "serving.max_latency_ms": 20,
            "serving.data_roots": [str(images)],
            "serving.max_upload_bytes": 2_000_000,
        },
    )
    pngs = sorted((images / "pngs").glob("*.png"))
    with start_service(config, log_path=tmp_path / "serve.log") as svc:
        info = client.info(svc.url)
        assert info["model_version"] == "1" and "CPUExecutionProvider" in info["providers"]
        assert info["input"]["shape"] == ["batch", 32, 32, 3] and info["input"]["dtype"] == "uint8"

        # Real images, several formats, concurrent requests: the registry's scores within 1e-4.
        rows = client.score_files(svc.url, pngs, chunk=4, concurrency=6)
        expected = _expected(registry, "1", images / "pngs")
        assert [r["id"] for r in rows] == [p.name for p in pngs] and {r["model_version"] for r in rows} == {"1"}
        assert np.abs(np.array([r["score"] for r in rows]) - np.array([expected[p.name] for p in pngs])).max() < 1e-4
        mixed = ["photo.jpg", "tiff/u16_3ch.tif", "fits/sky.fits", "fits/sky.fits.gz"]
        rows = client.score_files(svc.url, [image_dir / m for m in mixed], chunk=4)
        want = _expected(registry, "1", image_dir, ids=mixed)
        assert np.allclose([r["score"] for r in rows], [want[m] for m in mixed], atol=1e-4)
        assert max(client.info(svc.url)["batching"]["recent_batch_sizes"]) > 4  # requests were batched together
        # Decoded arrays (what the main job holds in memory) score through the service as they do in memory.
        arrays = load_images(images / "pngs", OnnxScorer(registry.onnx_paths["1"]).spec, workers=1)
        rows = client.score_arrays(svc.url, arrays.ids[:12], arrays.images[:12], chunk=5)
        assert [r["id"] for r in rows] == [f"{i}.png" for i in arrays.ids[:12]]
        assert np.allclose([r["score"] for r in rows], [expected[i] for i in arrays.ids[:12]], atol=1e-4)

        # Bad input: a clear 4xx each time, and the service keeps serving.
        good = [("images", ("ok.png", pngs[0].read_bytes(), "image/png"))]
        bad_requests = [
            (415, [("images", ("notes.png", b"plain text, not an image", "image/png"))]),
            (422, [("images", ("cut.png", pngs[1].read_bytes()[:200], "image/png"))]),
            (413, [("images", (f"{i}.png", pngs[0].read_bytes(), "image/png")) for i in range(33)]),
            (413, [("images", ("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(3_000_000), "image/png"))]),
        ]
        for status, files in bad_requests:
            resp = httpx.post(f"{svc.url}/score", files=files, timeout=60)
            assert resp.status_code == status, resp.text
            assert resp.json()["error"]
            ok = httpx.post(f"{svc.url}/score", files=good, timeout=60)
            assert ok.status_code == 200 and ok.json()[0]["score"] == pytest.approx(expected[pngs[0].name], abs=1e-4)
        assert httpx.post(f"{svc.url}/score", data={"x": "1"}, timeout=60).status_code == 400
        # client mistakes in the multipart body itself: 4xx with a reason, never a 500
        other_field = [("image", ("ok.png", pngs[0].read_bytes(), "image/png"))]
        long_name = [("images", ("x" * 250 + ".png", pngs[0].read_bytes(), "image/png"))]
        for files, reason in ((other_field, "unknown multipart field 'image'"), (long_name, "file name too long")):
            resp = httpx.post(f"{svc.url}/score", files=files, timeout=60)
            assert resp.status_code == 400 and reason in resp.json()["error"], resp.text

        # Ten 1 MB .fits.gz bombs (headers declaring 20000 x 20000 float32, then 1 GiB of zeros): each a 413
        # naming the problem, refused before inflating, and the worker's memory stays where it was.
        bomb = fits_bomb_gz(20000, 20000, zero_bytes=1 << 30)
        assert len(bomb) < 1_500_000
        pid = client.info(svc.url)["pid"]
        rss_before = _rss_bytes(pid)
        for i in range(10):
            resp = httpx.post(f"{svc.url}/score", files=[("images", (f"b{i}.fits.gz", bomb, "application/gzip"))])
            assert resp.status_code == 413 and "declares 400000000 pixels" in resp.json()["error"], resp.text
        assert _rss_bytes(pid) - rss_before < 200 * 2**20

        # Bulk jobs: server-side sources under the data roots only.
        job = client.submit_bulk(svc.url, [str(images / "pngs")], top_n=5)
        status = client.wait_bulk(svc.url, job["job_id"], timeout=120)
        assert status["status"] == "done" and status["scored"] == len(pngs) and status["top_file"]
        table = read_scores(status["out_dir"]).to_pydict()
        assert sorted(table["id"]) == sorted(p.name for p in pngs)
        assert max(abs(s - expected[i]) for i, s in zip(table["id"], table["score"])) < 1e-4
        for outside in ("/etc", str(images / ".." / "elsewhere")):
            with pytest.raises(client.ServiceError) as err:
                client.submit_bulk(svc.url, [outside])
            assert err.value.status == 403 and "data roots" in str(err.value)
        with pytest.raises(client.ServiceError) as err:
            client.bulk_status(svc.url, "no-such-job")
        assert err.value.status == 404

        # Hot reload: move the alias while a client keeps scoring; nothing fails, versions go 1 -> 2.
        seen: list[tuple[int, str]] = []
        stop = threading.Event()

        def keep_scoring() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    resp = http.post(f"{svc.url}/score", files=good)
                    seen.append((resp.status_code, resp.json()[0]["model_version"] if resp.status_code == 200 else ""))

        worker = threading.Thread(target=keep_scoring)
        worker.start()
        try:
            time.sleep(0.5)
            from mlflow import MlflowClient

            MlflowClient(registry.tracking_uri).set_registered_model_alias("anomalymatch", ALIAS, "2")
            deadline = time.monotonic() + 30
            while client.info(svc.url)["model_version"] != "2" and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            stop.set()
            worker.join(60)
        assert seen and all(code == 200 for code, _ in seen), seen
        versions = [v for _, v in seen]
        assert versions[0] == "1" and versions[-1] == "2" and versions == sorted(versions)
        rows = client.score_files(svc.url, pngs[:8])
        v2 = _expected(registry, "2", images / "pngs")
        assert np.allclose([r["score"] for r in rows], [v2[p.name] for p in pngs[:8]], atol=1e-4)

        # Once the label store has users, every labelling and bulk endpoint needs a token of its role.
        from anomalymatch.labelstore import LabelStore
        from anomalymatch.users import add_user

        with LabelStore.from_config(config.labelstore, config.data_path) as store:
            viewer, admin = add_user(store, "vera", "viewer"), add_user(store, "ada", "admin")
        for route, payload in (("candidates", {}), ("bulk_jobs", {}), ("labels", {"labels": []})):
            assert httpx.post(f"{svc.url}/{route}", json=payload, timeout=30).status_code == 401, route
        as_viewer = {"Authorization": f"Bearer {viewer}"}
        assert httpx.post(f"{svc.url}/retrain_status", json={}, headers=as_viewer).status_code == 200
        refused = httpx.post(f"{svc.url}/bulk_submit", json={"sources": [str(images / "pngs")]}, headers=as_viewer)
        assert refused.status_code == 403 and "admin" in refused.json()["error"]
        jobs = client.submit_bulk(svc.url, [str(images / "pngs")], token=admin)  # an admin may
        assert client.wait_bulk(svc.url, jobs["job_id"], timeout=120, token=admin)["status"] == "done"
    assert svc.process.returncode in (0, -signal.SIGTERM)  # stopped by SIGTERM with the block, not killed


def test_cli_bulk_job_killed_midway_resumes_exactly_once(registry, tmp_path):
    folder = tmp_path / "many"
    write_pngs(folder, 1200, size=96)
    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [
        sys.executable,
        "-m",
        "anomalymatch.cli",
        "score",
        "--source",
        str(folder),
        "--out",
        str(out),
        "--tracking-uri",
        registry.tracking_uri,
        "--data-dir",
        str(tmp_path / "home"),
        "--batch-size",
        "32",
        "--shard-rows",
        "64",
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifest = out / "manifest.json"
            if manifest.is_file() and len(read_manifest(out)["shards"]) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    killed = read_manifest(out)
    assert killed["progress"]["status"] == "running" and 0 < killed["progress"]["scored"] < 1200

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stdout
    table = read_scores(out).to_pydict()
    assert len(table["id"]) == len(set(table["id"])) == 1200
    assert set(table["model_version"]) == {"1"}
    assert read_manifest(out)["progress"]["status"] == "done"
    # The resumed run scored only what was left: its shards start at the killed run's cursor.
    first_new = read_manifest(out)["shards"][len(killed["shards"])]
    assert first_new["start"] == killed["sources"][0]["next_index"]

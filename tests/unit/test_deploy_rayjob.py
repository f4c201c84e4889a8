"""deploy/rayjob.yaml: a KubeRay RayJob that parses, has CPU decode and GPU scoring worker groups, mounts the
archive read-only wherever it is read and the output where the driver writes, and whose entrypoint is the
real ``anomalymatch score --engine ray`` command (checked with the CLI's own parser). The entrypoint runs on
a local multi-node Ray cluster in tests/integration/test_ray_engine.py."""

from __future__ import annotations

from pathlib import Path

from anomalymatch.cli import build_parser
from tests.helpers.rayjob import DEPLOY, entrypoint_argv, load_rayjob, with_options


def entrypoint_args():  # type: ignore[no-untyped-def]
    argv = entrypoint_argv()
    assert argv[0] == "anomalymatch", "the entrypoint is the installed CLI"
    return argv, build_parser().parse_args(argv[1:])


def _mounts(template: dict) -> dict[str, bool]:
    container = template["spec"]["containers"][0]
    return {m["mountPath"]: m.get("readOnly", False) for m in container.get("volumeMounts", [])}


def test_rayjob_parses_with_cpu_decode_and_gpu_scoring_groups():
    job = load_rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    cluster = job["spec"]["rayClusterSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    cpu = groups["decode-cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpu = groups["score-gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu and gpu["nvidia.com/gpu"] == "1"
    assert cluster["rayVersion"].startswith("2.")
    images = {
        c["image"] for g in [cluster["headGroupSpec"], *groups.values()] for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1, "every node runs the same image (deploy/Dockerfile.ray)"


def test_entrypoint_is_the_cli_score_command_with_the_ray_engine():
    argv, args = entrypoint_args()
    assert args.verb == "score" and args.engine == "ray" and args.address == "auto"
    job = load_rayjob()["spec"]["rayClusterSpec"]
    head = _mounts(job["headGroupSpec"]["template"])
    archive = next(path for path, ro in head.items() if ro)
    output = next(path for path, ro in head.items() if not ro)
    assert all(Path(s).is_relative_to(archive) for s in args.source) and Path(args.out).is_relative_to(output)
    assert Path(args.data_dir).is_relative_to(output), "the resolved model stays with the job's output"
    for group in job["workerGroupSpecs"]:  # every worker reads the archive at the same path, read-only
        assert _mounts(group["template"]).get(archive) is True


def test_the_image_installs_the_ray_extra_and_the_gpu_runtime():
    text = (DEPLOY / "Dockerfile.ray").read_text()
    ray_version = load_rayjob()["spec"]["rayClusterSpec"]["rayVersion"]
    assert f"rayproject/ray:{ray_version}-" in text, "the image's Ray is the cluster's Ray"
    assert ".[serving,ray]" in text and ".[gpu]" in text and "pip uninstall -y onnxruntime" in text


def test_with_options_replaces_only_the_named_options():
    argv = ["anomalymatch", "score", "--engine", "ray", "--source", "a", "b", "--out", "o", "--quiet"]
    assert with_options(argv, {"--source": ["x"], "--out": ["p"]}) == [
        "anomalymatch",
        "score",
        "--engine",
        "ray",
        "--quiet",
        "--source",
        "x",
        "--out",
        "p",
    ]

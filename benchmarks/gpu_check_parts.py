"""The measurements of ``gpu_check.py``, one function per JSON section; each returns a dict of figures and
of what actually ran (device, providers, precision, batch size, input memory)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import zipfile
from pathlib import Path

import numpy as np


def write_subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` JPEGs of a GZ1 zip into a stored zip (to carry to a machine without the data)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in sorted(i for i in zin.namelist() if i.lower().endswith((".jpg", ".jpeg")))[:n]:
            zout.writestr(name, zin.read(name))
    return dst


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def training_rates(size: int, iterations: int, quick: bool) -> dict:
    """Seconds per FixMatch iteration (16 labelled + 80 weak + 80 strong unlabelled, backward, SGD, EMA) in
    fp32 and bf16, and whether a seeded bf16 run repeats exactly."""
    import torch

    from anomalymatch.config import FixMatchConfig
    from anomalymatch.preprocessing import PreprocessSpec
    from training.model import create_model
    from training.trainer import FixMatchTrainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    labelled = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    y = (np.arange(64) % 8 == 0).astype(np.int64)
    pool = rng.integers(0, 256, (120 if quick else 2000, size, size, 3), dtype=np.uint8)
    base = FixMatchConfig(batch_size=4, uratio=2) if quick else FixMatchConfig()
    out: dict = {"device": device, "batch_size": base.batch_size, "uratio": base.uratio, "iterations": iterations}

    def trainer(precision: str) -> FixMatchTrainer:
        torch.manual_seed(0)
        model = create_model(PreprocessSpec(size=size), pretrained=False)
        return FixMatchTrainer(model, dataclasses.replace(base, precision=precision), seed=0, device=device)

    for precision in ("fp32", "bf16"):
        t = trainer(precision)
        t.train(labelled, y, pool, iterations=2)  # warm-up: kernels chosen, allocator filled
        _sync()
        t0 = time.perf_counter()
        history = t.train(labelled, y, pool, iterations=iterations)
        _sync()
        seconds = time.perf_counter() - t0
        out[precision] = {
            "s_per_iteration": round(seconds / iterations, 4),
            "final_loss_finite": bool(np.isfinite(history[-1].loss)),
        }
    runs = []
    for _ in range(2):
        t = trainer("bf16")
        t.train(labelled, y, pool, iterations=3)
        runs.append([v.detach().cpu() for v in t.model.state_dict().values()])
    out["bf16_seeded_runs_identical"] = all(torch.equal(a, b) for a, b in zip(*runs))
    return out


def models(size: int, work: Path) -> dict[str, Path]:
    """EfficientNet-Lite0 (random init: timing only) exported at ``size`` in fp32 and fp16, once."""
    import torch

    from anomalymatch.preprocessing import PreprocessSpec
    from registry.onnx_export import export_onnx
    from training.model import create_model

    paths = {p: work / f"lite0_{size}_{p}.onnx" for p in ("fp32", "fp16")}
    if not all(p.is_file() for p in paths.values()):
        torch.manual_seed(0)
        model = create_model(PreprocessSpec(size=size), pretrained=False).eval()
        for precision, path in paths.items():
            export_onnx(model, path, model_version="gpu_check", precision=precision)
    return paths


def pool_rates(size: int, images: np.ndarray, work: Path, quick: bool) -> dict:
    """Images/s of ``OnnxScorer.score`` on decoded images in memory (fp32 and fp16 files), the fp16-vs-fp32
    score difference on this provider, and eager torch (the trainer's GPU scoring path) for comparison."""
    import torch

    from anomalymatch.scoring import OnnxScorer
    from registry.parity import compare_scores
    from training.trainer import score_images

    out: dict = {"images": len(images)}
    scores = {}
    for precision, path in models(size, work).items():
        scorer = OnnxScorer(path)
        batch = scorer.default_batch_size
        scorer.score(images[:batch])  # warm-up
        t0 = time.perf_counter()
        scores[precision] = scorer.score(images)
        seconds = time.perf_counter() - t0
        out[precision] = {
            "images_per_s": round(len(images) / seconds, 1),
            "providers": scorer.providers,
            "batch_size": batch,
            "io_binding": scorer.io_binding,
            "input_memory": scorer.input_memory,
        }
    ids = np.asarray([f"img{i}" for i in range(len(images))], dtype=object)
    verdict = compare_scores(scores["fp32"], scores["fp16"], ids, tolerance=1e-3, top_k=100)
    out["fp16_vs_fp32_on_this_provider"] = {"passed": verdict.passed, "reason": verdict.reason}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or quick:
        from anomalymatch.preprocessing import PreprocessSpec
        from training.model import create_model

        torch.manual_seed(0)
        model = create_model(PreprocessSpec(size=size), pretrained=False).to(device).eval()
        score_images(model, images[:256], 256, device)
        _sync()
        t0 = time.perf_counter()
        score_images(model, images, 256, device)
        _sync()
        out["torch_eager_fp32"] = {"images_per_s": round(len(images) / (time.perf_counter() - t0), 1), "device": device}
    return out


def bulk_rates(size: int, data: Path, work: Path, n: int) -> dict:
    """End-to-end ``BulkJob`` images/s (read the zip, decode 423 px JPEGs in threads, score, write Parquet)."""
    from anomalymatch.scoring import OnnxScorer
    from serving.bulk import BulkJob

    source = work / f"bulk_{n}.zip"
    if not source.is_file():
        write_subset(data, source, n)
    out: dict = {"workers": os.cpu_count()}
    for precision, path in models(size, work).items():
        scorer = OnnxScorer(path, spinning=False)
        job = BulkJob(
            [source],
            work / f"bulk_out_{size}_{precision}",
            scorer,
            "gpu_check",
            batch_size=scorer.default_batch_size,
            workers=os.cpu_count() or 1,
            top_n=100,
        )
        progress = job.run()
        out[precision] = {
            "images": progress.scored,
            "images_per_s": round(progress.images_per_second, 1),
            "providers": scorer.providers,
            "batch_size": scorer.default_batch_size,
        }
    return out


def service_rate(size: int, data: Path, work: Path, quick: bool) -> dict:
    """The real service (``bentoml serve``) with 64 clients each sending 8 JPEGs per request."""
    try:
        import bentoml  # noqa: F401
        import httpx  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"{exc}: the service needs bentoml and httpx (carry them as wheels to measure it)"}
    from bench_service import load

    from anomalymatch.config import load_config
    from serving import client
    from serving.launch import start_service

    with zipfile.ZipFile(data) as zf:
        names = sorted(i for i in zf.namelist() if i.lower().endswith((".jpg", ".jpeg")))[:256]
        payloads = [(Path(n).name, zf.read(n)) for n in names]
    config = load_config(
        None,
        {
            "data_dir": str(work / "service_home"),
            "serving.port": 0,
            "serving.model": str(models(size, work)["fp32"]),
            "serving.batching": True,
            "serving.max_batch_size": 64,
            "serving.reload_interval_s": 0,
        },
    )
    requests = 64 if quick else 512
    with start_service(config, log_path=work / "service.log") as svc:
        asyncio.run(load(svc.url, payloads, 8, 16, 8))  # warm-up
        row = asyncio.run(load(svc.url, payloads, 64, requests, 8))
        row["providers"] = client.info(svc.url).get("providers")
    return row

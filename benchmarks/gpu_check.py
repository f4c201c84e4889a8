"""One GPU check, one JSON: training seconds per FixMatch iteration (64 and 224 px, fp32 and bf16), pool
scoring and bulk scoring images/s (64 and 224 px, fp32 and fp16 ONNX files), the service's images/s with
64 clients x 8 images, and the devices and ONNX Runtime providers actually used.

    benchmarks/gpu_check.sh [--quick]          # the wrapper: picks the Python, a time limit, the output
    python benchmarks/gpu_check.py --subset .gpudata/gz1.zip --n 3000   # here: real data small enough to carry

Installs nothing. Images: real GZ1 JPEGs from ``--data`` (default: ``.gpudata/gz1.zip``, then
``shared/data/gz1/images.zip`` inside or beside the checkout); without any, real-decoded synthetic
galaxies (JPEG-encoded, then decoded like the real ones) and a note saying so. Each section runs under a
time budget (``--budget-s``, 420 s by default) and records an error or a skip reason instead of stopping
the run; on a machine without CUDA everything still runs (on the CPU) and the JSON says so. ``--quick``:
tiny sizes and counts, to prove the script end to end on a CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

DATA_CANDIDATES = (
    ROOT / ".gpudata" / "gz1.zip",
    ROOT / "shared" / "data" / "gz1" / "images.zip",
    ROOT.parent / "shared" / "data" / "gz1" / "images.zip",
)


def synthetic_zip(dst: Path, n: int) -> Path:
    """``n`` synthetic galaxies (elliptical profiles on noise), JPEG-encoded as GZ1 is, in a stored zip."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:423, 0:423].astype(np.float32) - 211
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for k in range(n):
            q, angle, scale = rng.uniform(0.3, 1), rng.uniform(0, np.pi), rng.uniform(8, 40)
            u = xx * np.cos(angle) + yy * np.sin(angle)
            v = (-xx * np.sin(angle) + yy * np.cos(angle)) / q
            light = np.exp(-np.hypot(u, v) / scale)[..., None] * rng.uniform(120, 255, 3)
            pixels = np.clip(light + rng.normal(8, 4, (423, 423, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            zf.writestr(f"synthetic_{k:05d}.jpeg", buf.getvalue())
    return dst


def decode(zip_path: Path, size: int, n: int) -> np.ndarray:
    """The first ``n`` images of a zip decoded by the project's loader at ``size`` (uint8 NHWC)."""
    from anomalymatch.loader import iter_batches
    from anomalymatch.preprocessing import PreprocessSpec
    from anomalymatch.sources import open_source

    source = open_source(zip_path)
    try:
        batches = iter_batches(source, PreprocessSpec(size=size), 256, os.cpu_count() or 1, ids=source.ids[:n])
        return np.concatenate([b.images for b in batches])
    finally:
        source.close()


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def section(results: dict, key: str, budget: Budget, need_s: float, fn: Callable[[], object]) -> None:
    """Run one measurement into ``results[key]``; a failure or a spent budget is recorded, not raised."""
    if budget.left() < need_s:
        results[key] = {"skipped": f"time budget: {budget.left():.0f} s left, this needs about {need_s:.0f} s"}
        return
    t0 = time.monotonic()
    try:
        results[key] = fn()
    except Exception as exc:  # a benchmark harness: record what broke and go on with the next section
        results[key] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    print(f"[gpu_check] {key}: {time.monotonic() - t0:.1f} s -> {json.dumps(results[key])[:300]}", flush=True)


def environment() -> dict:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers_available": ort.get_available_providers(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and counts (prove it end to end on a CPU)")
    p.add_argument("--data", type=Path, help="a zip of GZ1 JPEGs (default: the first of DATA_CANDIDATES found)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sections after this")
    p.add_argument("--subset", type=Path, help="only write the first --n GZ1 JPEGs into this zip, then exit")
    p.add_argument("--n", type=int, default=3000)
    args = p.parse_args()
    from gpu_check_parts import bulk_rates, pool_rates, service_rate, training_rates, write_subset

    if args.subset:
        src = args.data or next((c for c in DATA_CANDIDATES[1:] if c.is_file()), None)
        if src is None:
            p.error("no GZ1 images.zip found beside the checkout: pass --data")
        print(write_subset(src, args.subset, args.n))
        return 0

    budget = Budget(args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sizes = (32, 48) if args.quick else (64, 224)
    n_pool = {32: 96, 48: 96} if args.quick else {64: 4000, 224: 1500}
    results: dict = {"quick": args.quick, "sizes": list(sizes), "environment": environment()}
    data = args.data or next((c for c in DATA_CANDIDATES if c.is_file()), None)
    if data is not None and data.is_file():
        results["data"] = {"source": str(data), "kind": "real GZ1 JPEGs (423 px)"}
    else:
        n = max(n_pool.values())
        data = synthetic_zip(work / "synthetic.zip", n)
        results["data"] = {
            "source": str(data),
            "kind": "SYNTHETIC: no GZ1 zip found; elliptical profiles on noise, JPEG-encoded and decoded like GZ1",
        }
    print(f"[gpu_check] {json.dumps(results['environment'])}; data: {results['data']}", flush=True)
    iterations = 3 if args.quick else 20
    for size in sizes:
        section(results, f"training_{size}", budget, 10, partial(training_rates, size, iterations, args.quick))
    for size in sizes:
        images = decode(data, size, n_pool[size])
        section(results, f"pool_scoring_{size}", budget, 15, partial(pool_rates, size, images, work, args.quick))
        section(results, f"bulk_scoring_{size}", budget, 20, partial(bulk_rates, size, data, work, n_pool[size]))
    section(results, f"service_{sizes[0]}", budget, 40, partial(service_rate, sizes[0], data, work, args.quick))
    results["seconds"] = round(args.budget_s - budget.left(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"[gpu_check] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

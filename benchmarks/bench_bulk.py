"""Bulk scoring throughput, end to end, against raw ONNX Runtime and a reference-style loop, in one run.

For each model size (64 and 224 px; EfficientNet-Lite0 exported with registry.export_onnx) and each
source (an HDF5 file of raw uint8 cutouts, a folder of JPEGs), from the real GZ1 galaxy images:

- ``raw_onnx``: ``OnnxScorer.score`` on arrays already decoded in memory (the ceiling);
- ``bulk``: ``serving.bulk.BulkJob`` end to end: read, decode in parallel, infer, write Parquet shards;
- ``reference``: the paper's style: one decode thread (``iter_batches(workers=0)``, no overlap) and
  eager fp32 torch on the same weights.

The HDF5 holds the GZ1 images resized to twice the model size (raw uint8, chunked per 64 images, no
compression), so the loader resizes 2:1; the folder holds the original 423 x 423 JPEGs (JPEG draft
decoding applies). Prints a markdown table and writes JSON to benchmarks/results/.

    python benchmarks/bench_bulk.py [--n64 6000] [--n224 800] [--workdir /tmp/anomalymatch_bench]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from anomalymatch.loader import iter_batches, load_images  # noqa: E402
from anomalymatch.preprocessing import PreprocessSpec  # noqa: E402
from anomalymatch.scoring import OnnxScorer  # noqa: E402
from anomalymatch.sources import open_source  # noqa: E402
from serving.bulk import BulkJob  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GZ1_ZIP = ROOT / ".." / "shared" / "data" / "gz1" / "images.zip"


def gz1_jpegs(n: int) -> list[tuple[str, bytes]]:
    """The first ``n`` GZ1 JPEGs (cycling through the 6,664 with a new name when n is larger)."""
    with zipfile.ZipFile(GZ1_ZIP) as zf:
        names = sorted(i for i in zf.namelist() if i.lower().endswith((".jpg", ".jpeg")))
        out = []
        for k in range(n):
            name = names[k % len(names)]
            stem = Path(name).stem if k < len(names) else f"{Path(name).stem}_r{k // len(names)}"
            out.append((f"{stem}.jpeg", zf.read(name)))
    return out


def write_jpeg_folder(folder: Path, jpegs: list[tuple[str, bytes]]) -> Path:
    if folder.is_dir() and len(list(folder.iterdir())) == len(jpegs):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in jpegs:
        (folder / name).write_bytes(data)
    return folder


def write_hdf5(path: Path, jpegs: list[tuple[str, bytes]], side: int) -> Path:
    """Raw uint8 (N, side, side, 3) cutouts + ids, as survey archives store them."""
    import h5py
    from PIL import Image

    if path.is_file():
        return path
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        images = f.create_dataset("images", (len(jpegs), side, side, 3), np.uint8, chunks=(64, side, side, 3))
        for k, (_, data) in enumerate(jpegs):
            images[k] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.BOX))
        f["ids"] = np.array([name for name, _ in jpegs], dtype=object).astype("S")
    tmp.replace(path)
    return path


def export_model(size: int, path: Path):  # type: ignore[no-untyped-def]
    import torch

    from registry.onnx_export import export_onnx
    from training.model import create_model

    torch.manual_seed(0)
    model = create_model(PreprocessSpec(size=size), pretrained=False).eval()
    export_onnx(model, path, model_version="bench")
    return model


def _timed(n: int, wall: float, cpu: float, **extra: object) -> dict:
    return {
        "images": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "images_per_s": round(n / wall, 1),
        "images_per_cpu_s": round(n / max(cpu, 1e-9), 1),
        **extra,
    }


def bench_raw(scorer: OnnxScorer, images: np.ndarray, batch_size: int, repeats: int = 2) -> dict:
    """Best of ``repeats`` passes (the machine is shared: the best pass is the least disturbed)."""
    scorer.score(images[:batch_size], batch_size)  # warm-up
    best = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scorer.score(images, batch_size)
        result = _timed(len(images), time.perf_counter() - t0, time.process_time() - c0)
        if best is None or result["images_per_s"] > best["images_per_s"]:
            best = result
    return best  # type: ignore[return-value]


def bench_decode(source: Path, spec: PreprocessSpec, batch_size: int, workers: int) -> dict:
    """Decoding alone, with the same threads as the bulk job."""
    src = open_source(source)
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(len(b) for b in iter_batches(src, spec, batch_size=batch_size, workers=workers))
    result = _timed(n, time.perf_counter() - t0, time.process_time() - c0)
    src.close()
    return result


def bench_bulk(scorer: OnnxScorer, source: Path, out: Path, batch_size: int, workers: int, repeats: int = 2) -> dict:
    """Best of ``repeats`` fresh jobs, as for raw: the first job in a process also pays one-off costs
    (ONNX Runtime's memory arena for each batch shape, opening sources) that a long job amortises; at
    224 px over 600 images that alone halved the rate."""
    best = None
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        progress = BulkJob(
            [source], out, scorer, "bench", batch_size=batch_size, workers=workers, shard_rows=4096, top_n=100
        ).run()
        result = _timed(progress.scored, time.perf_counter() - t0, time.process_time() - c0, skipped=progress.skipped)
        if best is None or result["images_per_s"] > best["images_per_s"]:
            best = result
    return best  # type: ignore[return-value]


def bench_reference(model, source: Path, spec: PreprocessSpec, batch_size: int) -> dict:  # type: ignore[no-untyped-def]
    import torch

    src = open_source(source)
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for batch in iter_batches(src, spec, batch_size=batch_size, workers=0):
            x = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float()
            model.anomaly_probability(x).numpy()
            n += len(batch)
    result = _timed(n, time.perf_counter() - t0, time.process_time() - c0)
    src.close()
    return result


def run_size(size: int, n: int, work: Path, batch_size: int, workers: int) -> list[dict]:
    jpegs = gz1_jpegs(n)
    model_path = work / f"effnet_lite0_{size}.onnx"
    model = export_model(size, model_path)
    scorer = OnnxScorer(model_path)  # raw inference: spinning threads are fastest back to back
    bulk_scorer = OnnxScorer(model_path, spinning=False)  # as `anomalymatch score` and the service run it
    spec = scorer.spec
    sources = {
        "hdf5": write_hdf5(work / f"gz1_{n}_{2 * size}px.h5", jpegs, 2 * size),
        "jpeg_folder": write_jpeg_folder(work / f"gz1_jpeg_{n}", jpegs),
    }
    rows = []
    for kind, source in sources.items():
        preloaded = load_images(source, spec, workers=workers).images
        raw = bench_raw(scorer, preloaded, batch_size)
        decode = bench_decode(source, spec, batch_size, workers)
        bulk = bench_bulk(bulk_scorer, source, work / f"out_{size}_{kind}", batch_size, workers)
        ref = bench_reference(model, source, spec, batch_size)
        # When decoding and inference share the same CPUs, end to end cannot beat 1 / (1/raw + 1/decode)
        # in CPU-seconds: the fraction of raw ONNX that overlap alone can reach here.
        cpu_bound = 1.0 / (1.0 + raw["images_per_cpu_s"] / decode["images_per_cpu_s"])
        row = {
            "size": size,
            "source": kind,
            "images": n,
            "raw_onnx": raw,
            "decode_only": decode,
            "bulk": bulk,
            "reference": ref,
            "bulk_vs_raw": round(bulk["images_per_s"] / raw["images_per_s"], 3),
            "shared_cpu_bound_vs_raw": round(cpu_bound, 3),
            "bulk_vs_reference": round(bulk["images_per_s"] / ref["images_per_s"], 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n64", type=int, default=6000, help="images at 64 x 64")
    p.add_argument("--n224", type=int, default=800, help="images at 224 x 224")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0 = one per CPU)")
    p.add_argument("--workdir", default="/tmp/anomalymatch_bench")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bulk.json"))
    args = p.parse_args()
    from anomalymatch.loader import default_workers

    workers = args.workers or default_workers()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import torch

    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "decode_workers": workers,
        "batch_size": args.batch_size,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "load_avg_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    rows = []
    for size, n in ((64, args.n64), (224, args.n224)):
        if n > 0:
            rows += run_size(size, n, work, args.batch_size, workers)
    print(
        "\n| size | source | images | raw ONNX img/s | decode only img/s | bulk end-to-end img/s | bulk / raw "
        "| CPU-bound limit | reference img/s | bulk / reference |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['source']} | {r['images']} | {r['raw_onnx']['images_per_s']} | "
            f"{r['decode_only']['images_per_s']} | {r['bulk']['images_per_s']} | {r['bulk_vs_raw']:.0%} | "
            f"{r['shared_cpu_bound_vs_raw']:.0%} | {r['reference']['images_per_s']} | {r['bulk_vs_reference']}x |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

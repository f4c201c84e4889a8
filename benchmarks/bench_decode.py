"""Decode throughput through ``iter_batches`` on real archives, and the JPEG draft equivalence.

Reads the 6,664 GZ1 galaxy JPEGs (423 x 423) at 64 x 64 (full frame and crop 0.5, with and
without the JPEG draft fast path) and the first 10,000 CIFAR-10 JPEGs (32 x 32), then compares
the draft path with the full decode on GZ1 images. Prints a markdown table; ``--out`` saves JSON.

Besides wall-clock images/s it reports images per CPU-second (process CPU time), which stays
meaningful when other jobs share the machine; the load average at the start says how busy it was.

    python benchmarks/bench_decode.py [--data ../shared/data] [--workers 2] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomalymatch.decode import decode_image  # noqa: E402
from anomalymatch.loader import iter_batches  # noqa: E402
from anomalymatch.preprocessing import PreprocessSpec  # noqa: E402
from anomalymatch.sources import ImageSource, open_source  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def time_stream(
    source: ImageSource, spec: PreprocessSpec, ids: list[str], workers: int, batch_size: int, draft: bool = True
) -> dict:
    """Stream ``ids`` once; return counts, wall and CPU seconds, and rates."""
    load = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    stream = iter_batches(source, spec, batch_size=batch_size, workers=workers, ids=ids, draft=draft)
    n = sum(len(batch) for batch in stream)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "images": n,
        "skipped": len(stream.report),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "images_per_s": round(n / wall, 1),
        "images_per_cpu_s": round(n / cpu, 1),
        "load_avg_at_start": round(load, 2),
    }


def draft_equivalence(source: ImageSource, ids: list[str], size: int, crop: float) -> dict:
    """Per-pixel |draft - full| over ``ids`` (grey levels, 0-255)."""
    spec = PreprocessSpec(size=size, crop=crop)
    diffs = []
    for image_id in ids:
        data = source.read(image_id)
        fast = decode_image(data, image_id, spec).astype(np.int16)
        full = decode_image(data, image_id, spec, draft=False).astype(np.int16)
        diffs.append(np.abs(fast - full).ravel())
    d = np.concatenate(diffs)
    return {
        "images": len(ids),
        "crop": crop,
        "mean_abs_diff": round(float(d.mean()), 3),
        "p99_abs_diff": float(np.percentile(d, 99)),
        "max_abs_diff": int(d.max()),
    }


def markdown(rows: list[dict], equivalence: list[dict]) -> str:
    lines = [
        "| data | size | crop | draft | workers | images | images/s | images/CPU-s | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['size']} | {r['crop']} | {r['draft']} | {r['workers']} | "
            f"{r['images']:,} | {r['images_per_s']:,.0f} | {r['images_per_cpu_s']:,.0f} | "
            f"{r['load_avg_at_start']} |"
        )
    lines += ["", "| JPEG draft vs full decode (GZ1) | images | mean abs diff | p99 | max |", "|---|---|---|---|---|"]
    for e in equivalence:
        lines.append(
            f"| crop {e['crop']} | {e['images']} | {e['mean_abs_diff']} | {e['p99_abs_diff']:.0f} | "
            f"{e['max_abs_diff']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding gz1/ and cifar10/")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cifar-n", type=int, default=10_000)
    parser.add_argument("--equivalence-n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    gz1_path, cifar_path = args.data / "gz1" / "images.zip", args.data / "cifar10" / "images.zip"
    if not gz1_path.exists():
        print(f"GZ1 archive not found at {gz1_path}: pass --data pointing at the shared data folder", file=sys.stderr)
        return 2
    gz1 = open_source(gz1_path)
    time_stream(gz1, PreprocessSpec(size=args.size), gz1.ids[:256], args.workers, args.batch_size)  # warm-up

    rows = []
    cases = [
        ("GZ1 423px JPEG", gz1, gz1.ids, 1.0, True),
        ("GZ1 423px JPEG", gz1, gz1.ids, 0.5, True),
        ("GZ1 423px JPEG", gz1, gz1.ids, 1.0, False),
    ]
    if cifar_path.exists():
        cifar = open_source(cifar_path)
        cases.append((f"CIFAR-10 32px JPEG (first {args.cifar_n:,})", cifar, cifar.ids[: args.cifar_n], 1.0, True))
    else:
        print(f"CIFAR-10 archive not found at {cifar_path}; skipping that case", file=sys.stderr)
    for name, source, ids, crop, draft in cases:
        spec = PreprocessSpec(size=args.size, crop=crop)
        result = time_stream(source, spec, ids, args.workers, args.batch_size, draft=draft)
        rows.append({"name": name, "size": args.size, "crop": crop, "draft": draft, "workers": args.workers, **result})
        print(f"{name} crop={crop} draft={draft}: {result['images_per_s']:.0f} images/s", file=sys.stderr)

    sample = gz1.ids[: args.equivalence_n]
    equivalence = [draft_equivalence(gz1, sample, args.size, crop) for crop in (1.0, 0.5)]
    print(markdown(rows, equivalence))
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "throughput": rows,
                    "draft_equivalence": equivalence,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

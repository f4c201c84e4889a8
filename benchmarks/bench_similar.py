"""Exact "more like this" search (``anomalymatch.embeddings.EmbeddingSet.nearest``) over many stored vectors:
query latency p50/p99 for k=50 (after the first search, which makes the float32 copy, timed apart).

    .venv/bin/python benchmarks/bench_similar.py --vectors 1000000 --queries 50 --out benchmarks/results/similar.json

The vectors are random unit float16 rows of 1280 dimensions (the model's pooled features); exact search
costs the same whatever their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from anomalymatch.embeddings import EmbeddingSet

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--out", default="benchmarks/results/similar.json")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    vectors = np.empty((args.vectors, args.dim), dtype=np.float16)
    for start in range(0, args.vectors, 100_000):  # built in blocks: float32 of all rows would not fit twice
        block = rng.standard_normal((min(100_000, args.vectors - start), args.dim), dtype=np.float32)
        vectors[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    found = EmbeddingSet(np.char.mod("v%08d", np.arange(args.vectors)), vectors, "bench")
    t = time.perf_counter()
    found.nearest(found.vectors[0].astype(np.float32), args.k)  # the first search makes the float32 copy
    first_ms = (time.perf_counter() - t) * 1000
    times = []
    for q in range(1, args.queries + 1):
        query = found.vectors[q * 997 % args.vectors].astype(np.float32)
        t = time.perf_counter()
        hits = found.nearest(query, args.k)
        times.append((time.perf_counter() - t) * 1000)
        assert hits[0][0] == found.ids[q * 997 % args.vectors]  # the query itself comes first
    q99 = statistics.quantiles(times, n=100)[98] if len(times) >= 2 else times[0]
    result = {
        "meta": {"host": platform.node(), "cpus": os.cpu_count(), "vectors": args.vectors, "dim": args.dim},
        "memory_gb": round(vectors.nbytes / 1e9, 2),
        "first_query_ms": round(first_ms, 1),
        "query_ms": {"p50": round(statistics.median(times), 1), "p99": round(q99, 1), "k": args.k},
    }
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

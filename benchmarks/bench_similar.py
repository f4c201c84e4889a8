""" "More like this" over many stored vectors (``anomalymatch.embeddings.EmbeddingSet.nearest``): exact cosine
search against the IVF-PQ index (``anomalymatch.vector_index``). Reports, for k=50, query latency p50/p99 of
both (the exact one after the first search, which makes the float32 copy, timed apart), the index's build
time, file size and read-back time, and recall@50 of the index against exact search.

    .venv/bin/python benchmarks/bench_similar.py --vectors 1000000 --queries 200 --out benchmarks/results/similar.json

The vectors are clustered like a model's pooled features, not i.i.d. Gaussian (on which every method is
equally lost): ``--clusters`` centres in a ``--rank``-dimensional subspace with a power-law spectrum,
each vector a centre plus a within-cluster offset in that subspace plus a little isotropic noise, all
shifted by a common mean direction (pooled features of a ReLU-type network are non-negative, so unrelated
images still have a cosine similarity near 0.5). Queries are fresh draws, not stored vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BLOCK = 50_000


class Clustered:
    """A seeded generator of clustered feature-like vectors (see the module docstring)."""

    def __init__(self, dim: int, rank: int, clusters: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)  # (rank, dim)
        self.scale = (np.arange(1, rank + 1, dtype=np.float32) ** -0.5) * 4.0
        self.centres = rng.standard_normal((clusters, rank)).astype(np.float32) * self.scale
        mean = np.abs(rng.standard_normal(dim)).astype(np.float32)
        self.mean = mean / np.linalg.norm(mean) * 3.0
        self.dim = dim

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(0, len(self.centres), n)
        latent = self.centres[which] + 0.6 * rng.standard_normal((n, len(self.scale)), dtype=np.float32) * self.scale
        noise = 0.05 * rng.standard_normal((n, self.dim), dtype=np.float32)
        return latent @ self.basis + noise + self.mean


def percentiles(times: list[float]) -> dict[str, float]:
    q99 = statistics.quantiles(times, n=100)[98] if len(times) >= 2 else times[0]
    return {"p50": round(statistics.median(times), 2), "p99": round(q99, 2), "n": len(times)}


def exact_top(vectors32: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """Each query's exact k nearest rows (one pass over the matrix for all queries)."""
    best_sims = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors32), 262_144):
        sims = (vectors32[start : start + 262_144] @ queries.T).T  # (Q, chunk)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, 1)], axis=1)
        best_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argpartition(-best_sims, k - 1, axis=1)[:, :k]
        best_sims, best_rows = np.take_along_axis(best_sims, keep, 1), np.take_along_axis(best_rows, keep, 1)
    return [set(r.tolist()) for r in best_rows]


def main() -> int:
    from anomalymatch.embeddings import EmbeddingSet, normalise
    from anomalymatch.vector_index import SimilarConfig, index_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--rank", type=int, default=128, help="dimension of the subspace the clusters live in")
    p.add_argument("--clusters", type=int, default=5000)
    p.add_argument("--queries", type=int, default=200, help="queries for the index's latency and recall")
    p.add_argument("--exact-queries", type=int, default=50, help="queries timed one by one on exact search")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128], help="cells scanned: a sweep")
    p.add_argument("--refine", type=int, default=SimilarConfig.refine)
    p.add_argument("--out", default="benchmarks/results/similar.json")
    args = p.parse_args()

    gen = Clustered(args.dim, args.rank, args.clusters)
    rng = np.random.default_rng(1)
    vectors = np.empty((args.vectors, args.dim), dtype=np.float16)
    for start in range(0, args.vectors, BLOCK):  # built in blocks: float32 of all rows would not fit twice
        vectors[start : start + BLOCK] = normalise(gen.draw(min(BLOCK, args.vectors - start), rng))
    queries = normalise(gen.draw(args.queries, np.random.default_rng(2)))
    ids = np.char.mod("v%08d", np.arange(args.vectors))

    exact = EmbeddingSet(ids, vectors, "bench", SimilarConfig(search="exact"))
    t = time.perf_counter()
    exact.nearest(queries[0], args.k)  # the first search makes the float32 copy
    first_ms = (time.perf_counter() - t) * 1000
    exact_ms = []
    for q in queries[: args.exact_queries]:
        t = time.perf_counter()
        exact.nearest(q, args.k)
        exact_ms.append((time.perf_counter() - t) * 1000)
    truth = exact_top(exact._vectors32, queries, args.k)
    del exact.__dict__["_vectors32"]  # free the float32 copy (5 GB at a million) before the index is built

    config = SimilarConfig(search="approximate", refine=args.refine)
    with tempfile.TemporaryDirectory() as tmp:
        origin = Path(tmp) / "vectors.npz"
        approx = EmbeddingSet(ids, vectors, "bench", config, origin, "bench")
        t = time.perf_counter()
        approx.index  # noqa: B018  (trains, adds and writes the index)
        build_s = time.perf_counter() - t
        path = index_file(origin, "bench", config.tag(args.vectors))
        index_mb = path.stat().st_size / 1e6
        reread = EmbeddingSet(ids, vectors, "bench", config, origin, "bench")
        t = time.perf_counter()
        reread.index  # noqa: B018  (read back, not rebuilt)
        read_s = time.perf_counter() - t
    sweep = {}
    for nprobe in sorted(set(args.nprobe) | {config.nprobe}):
        reread.index.nprobe = nprobe
        approx_ms, recalls = [], []
        for q, true in zip(queries, truth):
            t = time.perf_counter()
            hits = reread.nearest(q, args.k)
            approx_ms.append((time.perf_counter() - t) * 1000)
            recalls.append(len({int(i[1:]) for i, _ in hits} & true) / args.k)
        sweep[nprobe] = {
            "query_ms": percentiles(approx_ms),
            "recall_at_k": round(float(np.mean(recalls)), 4),
            "recall_at_k_min": round(float(np.min(recalls)), 4),
        }

    result = {
        "meta": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "vectors": args.vectors,
            "dim": args.dim,
            "data": f"clustered: {args.clusters} clusters in a rank-{args.rank} subspace, common mean, noise",
            "queries": args.queries,
            "k": args.k,
        },
        "memory_gb": {
            "float16_vectors": round(vectors.nbytes / 1e9, 2),
            "exact_float32_copy": round(vectors.nbytes * 2 / 1e9, 2),
        },
        "exact": {"first_query_ms": round(first_ms, 1), "query_ms": percentiles(exact_ms)},
        "ivfpq": {
            "params": config.tag(args.vectors) + f"-refine{config.refine}",
            "build_s": round(build_s, 1),
            "index_mb": round(index_mb, 1),
            "read_s": round(read_s, 2),
            "default_nprobe": config.nprobe,
            **sweep[config.nprobe],
            "by_nprobe": sweep,
        },
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The label store under many labels: what ``POST /labels`` (a batch of 20) and ``/retrain_status`` cost
with N labels already stored, on SQLite and (with ``--postgres URL``, a throwaway database: it is wiped)
on PostgreSQL.

    .venv/bin/python benchmarks/bench_labelstore.py --labels 1000000 --out benchmarks/results/labelstore.json
    .venv/bin/python benchmarks/bench_labelstore.py --labels 1000000 --postgres postgresql+psycopg://...

The timed calls are the service's endpoint logic (``serving.labels_api.LabelsApi``: token check, one
transaction, the retrain status it answers with) without the HTTP layer. The watcher is taken to have
trained on all but the last 100 labels (the usual state), and, as the worst case, on none of them.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fill(store, n: int, batch: int = 20_000) -> float:
    """Register ``n`` images and store one label each, in batches; returns the seconds it took."""
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        ids = [f"img{i:08d}.fits" for i in range(start, min(n, start + batch))]
        store.register_images(ids)
        store.add_labels(
            [
                {"image_id": i, "label": "anomaly" if k % 50 == 0 else "nominal", "user": "bulk"}
                for k, i in enumerate(ids)
            ]
        )
    return time.perf_counter() - t0


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def measure(url: str, n: int, calls: int, data_dir: Path) -> dict:
    from anomalymatch.config import AppConfig, LabelStoreConfig
    from anomalymatch.labelstore import LabelStore
    from anomalymatch.retrain_state import RetrainState, state_path, write_state
    from serving.labels_api import LabelsApi

    store = LabelStore(url)
    fill_s = fill(store, n) if n else 0.0
    last = store.last_seq()
    store.close()
    os.environ["BENCH_LABEL_TOKEN"] = "bench"
    config = AppConfig(data_dir=str(data_dir), labelstore=LabelStoreConfig(url=url, token_env="BENCH_LABEL_TOKEN"))
    api = LabelsApi(config)
    out = {"backend": url.split(":", 1)[0].split("+")[0], "labels": last, "fill_s": round(fill_s, 1)}
    for trained, name in ((max(last - 100, 0), "trained_but_100"), (0, "trained_none")):
        write_state(state_path(data_dir), RetrainState(trained_seq=trained, attempted_seq=trained))
        post, status = [], []
        for k in range(calls):
            batch = [{"image_id": f"img{(k * 20 + j) % max(n, 1):08d}.fits", "label": "anomaly"} for j in range(20)]
            t0 = time.perf_counter()
            api.post(batch, key=uuid.uuid4().hex, user="ann", authorization="Bearer bench")
            post.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            api.status()
            status.append(time.perf_counter() - t0)
        out[name] = {"post_labels_20": percentiles(post), "retrain_status": percentiles(status)}
    api.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--postgres", help="a throwaway PostgreSQL database URL (wiped) to measure as well")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-labelstore-") as tmp:
        urls = [f"sqlite:///{Path(tmp) / 'labels.db'}"]
        if args.postgres:
            from tests.helpers.labelstore import wipe_postgres

            urls.append(wipe_postgres(args.postgres))
        for url in urls:
            result = measure(url, args.labels, args.calls, Path(tmp) / url.split(":")[0])
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.out:
        meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()

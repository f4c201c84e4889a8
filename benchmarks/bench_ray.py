"""The Ray engine against the local engine and raw ONNX inference, in one run, plus a cost model for
100 million images built from the per-stage rates measured here.

For each model size (64 and 224 px; EfficientNet-Lite0 exported with registry.export_onnx) over a folder
of real GZ1 galaxy JPEGs (423 x 423, JPEG draft decoding applies):

- ``raw_onnx``: ``OnnxScorer.score`` on images already decoded in memory (the ceiling);
- ``local``: ``serving.bulk.BulkJob`` end to end (read, decode in threads, infer, write shards);
- ``ray``: ``serving.ray_engine.RayBulkJob`` end to end on a 2-node Ray cluster started here
  (``ray.cluster_utils.Cluster``: a head and a worker node, one CPU each: the machine's 2 cores);
- per-stage rates: decode on one core, ONNX inference on one core (one intra-op thread), and the
  driver's shard writes (Parquet + manifest commit, rows/s).

The cost model: a node is ``--node-cores`` CPU cores and one GPU; decoding gets all cores but
``--feed-cores`` (which run the GPU actor and the system); a node scores min(decode capacity, GPU rate)
images/s; a cluster scores min(nodes x node rate, the driver's write rate). The GPU inference rate is NOT
measured here (no GPU on this machine): it is a parameter (``--gpu-rate64``, ``--gpu-rate224``). A CPU-only
node (inference on the CPU cores at the measured per-core rate, decode sharing them) is given too.

    python benchmarks/bench_ray.py [--n64 3000] [--n224 400] [--workdir /tmp/anomalymatch_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from bench_bulk import _timed, bench_raw, export_model, gz1_jpegs, write_jpeg_folder  # noqa: E402

from anomalymatch.loader import load_images, load_item  # noqa: E402
from anomalymatch.scoring import OnnxScorer  # noqa: E402
from anomalymatch.sources import open_source  # noqa: E402
from serving.bulk import BulkJob, _atomic_write  # noqa: E402
from serving.ray_engine import RayBulkJob, RayOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 100_000_000
BATCH = 64  # ONNX Runtime's batch on the CPU everywhere here (OnnxScorer.default_batch_size, what the actors use)


def _best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["images_per_s"])


def bench_local(scorer: OnnxScorer, source: Path, out: Path, repeats: int = 2) -> dict:
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        p = BulkJob([source], out, scorer, "bench", batch_size=BATCH, shard_rows=4096, top_n=100).run()
        runs.append(_timed(p.scored, time.perf_counter() - t0, time.process_time() - c0))
    return _best(runs)


def bench_ray(model: Path, source: Path, out: Path, repeats: int = 2) -> dict:
    """Wall time of whole jobs on the cluster (the driver is connected already: no ray.init in it)."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        job = RayBulkJob([source], out, model, "bench", ray_options=RayOptions(), shard_rows=4096, top_n=100)
        p = job.run()
        runs.append(_timed(p.scored, time.perf_counter() - t0, float("nan"), providers=job.providers))
    best = _best(runs)
    best.pop("cpu_s"), best.pop("images_per_cpu_s")  # the work runs in other processes
    return best


def bench_decode_one_core(source: Path, spec, n: int) -> dict:  # type: ignore[no-untyped-def]
    """What one decode task does: read + decode + resize, one thread."""
    src = open_source(source)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(min(n, len(src))):
        load_item(src, i, spec)
    result = _timed(min(n, len(src)), time.perf_counter() - t0, time.process_time() - c0)
    src.close()
    return result


def bench_infer_one_core(model: Path, images: np.ndarray) -> dict:
    """What one CPU scoring actor does: one ONNX Runtime thread."""
    return bench_raw(OnnxScorer(model, threads=1, spinning=False), images, BATCH)


def bench_write(rows: int = 65_536, shards: int = 8) -> dict:
    """The driver's commit per shard: a Parquet file of (id, score, model_version, source), fsync, rename."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for k in range(shards):
            table = pa.table(
                {
                    "id": pa.array([f"587722952767439{k:03d}{i:07d}.jpeg" for i in range(rows)], pa.string()),
                    "score": pa.array(np.random.default_rng(k).random(rows, np.float32), pa.float32()),
                    "model_version": pa.array(["12"] * rows, pa.string()),
                    "source": pa.array(["/archive/survey/images_0001.zip"] * rows, pa.string()),
                }
            )
            _atomic_write(Path(tmp) / f"part-{k:05d}.parquet", lambda p, t=table: pq.write_table(t, p))
        wall = time.perf_counter() - t0
    return {"rows": rows * shards, "wall_s": round(wall, 2), "rows_per_s": round(rows * shards / wall)}


def cost_model(rates: dict, write_rate: float, args: argparse.Namespace) -> dict:
    """Hours for IMAGES images per size: 1 GPU machine, 4 and 16 GPU nodes, and a 16-core CPU-only node."""
    out = {}
    decode_cores = args.node_cores - args.feed_cores
    for size, r in rates.items():
        gpu_rate = args.gpu_rate64 if size == 64 else args.gpu_rate224
        decode_node = r["decode_per_core"] * decode_cores
        node = min(decode_node, gpu_rate)
        # CPU only: each image costs 1/decode + 1/infer core-seconds on the same cores
        cpu_node = args.node_cores / (1 / r["decode_per_core"] + 1 / r["infer_per_core"])
        rows = {}
        for name, nodes, per_node in (
            ("1_gpu_machine", 1, node),
            ("4_gpu_nodes", 4, node),
            ("16_gpu_nodes", 16, node),
            ("1_cpu_node", 1, cpu_node),
            ("16_cpu_nodes", 16, cpu_node),
        ):
            rate = min(nodes * per_node, write_rate)
            bound = "write" if rate == write_rate else ("gpu" if per_node == gpu_rate else "decode/cpu")
            rows[name] = {
                "images_per_s": round(rate),
                "hours": round(IMAGES / rate / 3600, 2),
                "bound_by": bound,
                "hours_with_measured_ray_overhead": round(IMAGES / (rate * r["ray_vs_local"]) / 3600, 2),
            }
        out[str(size)] = {
            "gpu_images_per_s_assumed": gpu_rate,
            "decode_images_per_s_per_node": round(decode_node),
            **rows,
        }
    return out


def run_size(size: int, n: int, work: Path) -> dict:
    model_path = work / f"effnet_lite0_{size}.onnx"
    export_model(size, model_path)
    scorer = OnnxScorer(model_path)
    source = write_jpeg_folder(work / f"gz1_jpeg_{n}", gz1_jpegs(n))
    images = load_images(source, scorer.spec).images
    raw = bench_raw(scorer, images, BATCH)
    spec = scorer.spec
    del scorer  # each session keeps a memory arena (GBs at 224 px): one at a time
    local = bench_local(OnnxScorer(model_path, spinning=False), source, work / f"out_local_{size}")
    ray_run = bench_ray(model_path, source, work / f"out_ray_{size}")
    decode = bench_decode_one_core(source, spec, min(n, 1500))
    infer = bench_infer_one_core(model_path, images[: min(n, 2000)])
    row = {
        "size": size,
        "images": n,
        "raw_onnx": raw,
        "local": local,
        "ray_2_nodes": ray_run,
        "decode_one_core": decode,
        "infer_one_core": infer,
        "ray_vs_local": round(ray_run["images_per_s"] / local["images_per_s"], 3),
        "ray_vs_raw": round(ray_run["images_per_s"] / raw["images_per_s"], 3),
        "local_vs_raw": round(local["images_per_s"] / raw["images_per_s"], 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n64", type=int, default=3000, help="images at 64 x 64")
    p.add_argument("--n224", type=int, default=400, help="images at 224 x 224")
    p.add_argument("--node-cores", type=int, default=16, help="CPU cores per node in the cost model")
    p.add_argument("--feed-cores", type=int, default=2, help="cores per GPU node not decoding (actor, system)")
    p.add_argument("--gpu-rate64", type=float, default=20_000, help="ASSUMED GPU inference images/s at 64 px")
    p.add_argument("--gpu-rate224", type=float, default=2_500, help="ASSUMED GPU inference images/s at 224 px")
    p.add_argument("--workdir", default="/tmp/anomalymatch_bench")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray.json"))
    args = p.parse_args()
    import onnxruntime
    import ray
    from ray.cluster_utils import Cluster

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "load_avg_at_start": round(os.getloadavg()[0], 2),
        "cluster": "ray.cluster_utils.Cluster: head + 1 worker node, 1 CPU and 300 MB object store each",
        "source": "folder of GZ1 JPEGs, 423 x 423",
    }
    node = {"num_cpus": 1, "object_store_memory": 300 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        rows = [run_size(size, n, work) for size, n in ((64, args.n64), (224, args.n224)) if n > 0]
    finally:
        ray.shutdown()
        cluster.shutdown()
    write = bench_write()
    rates = {
        r["size"]: {
            "decode_per_core": r["decode_one_core"]["images_per_cpu_s"],
            "infer_per_core": r["infer_one_core"]["images_per_cpu_s"],
            "ray_vs_local": r["ray_vs_local"],
        }
        for r in rows
    }
    model = cost_model(rates, write["rows_per_s"], args)
    print("\n| size | images | raw ONNX img/s | local engine img/s | ray (2 nodes) img/s | ray / local | ray / raw |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['images']} | {r['raw_onnx']['images_per_s']} | {r['local']['images_per_s']} | "
            f"{r['ray_2_nodes']['images_per_s']} | {r['ray_vs_local']:.2f} | {r['ray_vs_raw']:.2f} |"
        )
    print(f"\nwrite: {write['rows_per_s']} rows/s; cost model for {IMAGES:,} images:")
    print(json.dumps(model, indent=1))
    result = {
        "meta": meta,
        "rows": rows,
        "write": write,
        "cost_model": {
            "images": IMAGES,
            "assumptions": {
                "node_cores": args.node_cores,
                "decode_cores_per_gpu_node": args.node_cores - args.feed_cores,
                "gpu_rate_not_measured": {"64": args.gpu_rate64, "224": args.gpu_rate224},
                "scaling": "per-stage rates scale linearly with cores and nodes; one driver writes all shards",
            },
            "hours": model,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Service throughput and latency: 1, 8 and 64 concurrent clients, adaptive batching on and off.

Starts the real service (``bentoml serve`` subprocess, ``serving.launch.start_service``) on an
EfficientNet-Lite0 exported at 64 x 64, and sends one real GZ1 galaxy JPEG (423 x 423) per request
from an asyncio client with ``clients`` requests in flight. Reports images/s and p50/p99 latency per
setting; prints a markdown table and writes JSON to benchmarks/results/. The client runs on the same
machine as the service (it takes CPU from it: quote the machine with the numbers).

    python benchmarks/bench_service.py [--requests 400] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from anomalymatch.config import load_config  # noqa: E402
from serving import client  # noqa: E402
from serving.launch import start_service  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_bulk import export_model, gz1_jpegs  # noqa: E402


async def load(url: str, payloads: list[tuple[str, bytes]], clients: int, requests: int, per_request: int = 1) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    failures: dict[str, int] = {}
    counter = iter(range(requests))

    async def one_client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for k in counter:
            files = [
                ("images", payloads[(k * per_request + j) % len(payloads)] + ("image/jpeg",))
                for j in range(per_request)
            ]
            t0 = time.perf_counter()
            try:
                resp = await http.post(f"{url}/score", files=files)
            except httpx.TransportError as exc:  # a dropped connection is an error to count, not a crash
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            errors += resp.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "images_per_request": per_request,
        "requests": requests,
        "errors": errors,
        "wall_s": round(wall, 2),
        "images_per_s": round(requests * per_request / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "transport_errors": failures,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--requests", type=int, default=400, help="requests per setting (1 image each)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--images-per-request", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-latency-ms", type=float, default=10.0)
    p.add_argument("--workdir", default="/tmp/anomalymatch_bench")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service.json"))
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / f"effnet_lite0_{args.size}.onnx"
    if not model_path.is_file():
        export_model(args.size, model_path)
    payloads = gz1_jpegs(256)
    rows = []
    for batching in (True, False):
        config = load_config(
            None,
            {
                "data_dir": str(work / "service_home"),
                "serving.port": 0,
                "serving.model": str(model_path),
                "serving.batching": batching,
                "serving.max_batch_size": args.max_batch_size,
                "serving.max_latency_ms": args.max_latency_ms,
                "serving.reload_interval_s": 0,
            },
        )
        with start_service(config, log_path=work / "bench_service.log") as svc:
            asyncio.run(load(svc.url, payloads, 8, 64))  # warm-up
            for per_request in args.images_per_request:
                for clients in args.clients:
                    stats = asyncio.run(
                        load(svc.url, payloads, clients, max(args.requests // per_request, 4 * clients), per_request)
                    )
                    sizes = client.info(svc.url)["batching"]["recent_batch_sizes"]
                    row = {
                        "batching": batching,
                        **stats,
                        "mean_batch_images": round(float(np.mean(sizes)), 1) if sizes else None,
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print("\n| batching | images/request | clients | images/s | p50 ms | p99 ms | mean batch (images) | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'on' if r['batching'] else 'off'} | {r['images_per_request']} | {r['clients']} | "
            f"{r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_batch_images'] or '-'} | {r['errors']} |"
        )
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "max_batch_size": args.max_batch_size,
        "max_latency_ms": args.max_latency_ms,
        "payload": "GZ1 423x423 JPEGs (images_per_request per request)",
        "load_avg_at_start": round(os.getloadavg()[0], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

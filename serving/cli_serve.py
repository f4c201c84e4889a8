"""``anomalymatch serve``: run the BentoML scoring service on a registered or local ONNX model."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (serving section; command-line options override it)")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument(
        "--model",
        help="models:/anomalymatch@champion (default), models:/NAME/VERSION, a version number, or an .onnx file",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else the SQLite store in the data folder)",
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 3000)")
    p.add_argument("--no-batching", action="store_true", help="score every request on its own")
    p.add_argument("--max-batch-size", type=int, help="images per batch across requests (default 64)")
    p.add_argument("--max-latency-ms", type=float, help="longest wait for a batch to fill (default 10)")
    p.add_argument("--data-root", action="append", help="folder bulk jobs may read (repeatable; none = no bulk jobs)")
    p.add_argument("--reload-interval", type=float, help="seconds between checks of the alias (0 = never; default 30)")
    p.add_argument(
        "--with-retrain",
        action="store_true",
        help="also run the retraining watcher (anomalymatch retrain --watch) as a child of the service",
    )


def overrides_from_args(args: argparse.Namespace) -> dict:
    return {
        "data_dir": args.data_dir,
        "tracking.tracking_uri": args.tracking_uri,
        "serving.model": args.model,
        "serving.host": args.host,
        "serving.port": args.port,
        "serving.batching": False if args.no_batching else None,
        "serving.max_batch_size": args.max_batch_size,
        "serving.max_latency_ms": args.max_latency_ms,
        "serving.data_roots": args.data_root,
        "serving.reload_interval_s": args.reload_interval,
        "retrain.in_service": True if args.with_retrain else None,
    }


def run(args: argparse.Namespace) -> int:
    import os

    from anomalymatch.config import load_config
    from serving.launch import bentoml_command, service_env

    config = load_config(args.config, overrides_from_args(args))
    command = bentoml_command(config)
    print(
        f"serving {config.serving.model} on http://{config.serving.host}:{config.serving.port} "
        f"(batching {'on' if config.serving.batching else 'off'})",
        flush=True,
    )
    os.execve(command[0], command, service_env(config))  # bentoml takes over this process and its signals
    return 0  # pragma: no cover - execve does not return

"""``anomalymatch score``: resumable bulk scoring of folders, zips, HDF5 or image files to Parquet shards.

    anomalymatch score --source survey.zip --out run1                      # scores, top.csv, errors.csv
    anomalymatch score --source survey.zip --out run1 --embeddings         # also each image's features
    anomalymatch score --source survey.zip --out run1 --catalogue cat.csv  # catalogue columns in top.csv

Without ``--catalogue``, the catalogue attached to the campaign (``anomalymatch catalogue attach``) goes
into top.csv when there is one. A job's embeddings are searched by ``anomalymatch similar ID --bulk run1``.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", nargs="+", required=True, metavar="SRC", help="folders, .zip, .h5/.hdf5 or image files to score"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (shards, manifest, top.csv, errors.csv); running again on the same folder resumes",
    )
    p.add_argument(
        "--model",
        help="models:/anomalymatch@champion (default), models:/NAME/VERSION, a version "
        "number, or an .onnx file; a resumed job keeps its version",
    )
    p.add_argument("--top", type=int, help="candidates in top.csv (default 1000)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI")
    p.add_argument("--batch-size", type=int, help="images per inference batch (default 256)")
    p.add_argument("--workers", type=int, help="decoding threads (default one per CPU)")
    p.add_argument("--shard-rows", type=int, help="scored images per committed shard (default 65536)")
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers to try in order (default CUDA, CPU)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "auto"],
        help="fp16: the version's fp16 variant if it passed parity; auto: fp16 on CUDA only (default fp32)",
    )
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="also store each image's pooled features (float16) for 'anomalymatch similar --bulk'; "
        "a resumed job keeps the choice it started with",
    )
    p.add_argument(
        "--catalogue",
        metavar="CSV",
        help="survey catalogue (id, ra, dec, other columns) whose columns and sky links go into top.csv "
        "(default: the catalogue attached to the campaign, if any)",
    )
    p.add_argument("--catalogue-id-column", default="id", help="the catalogue's id column (default id)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],  # serving.ray_engine.Engine (not imported here: the CLI starts light)
        default="local",
        help="local: this process (default); ray: a Ray cluster (Ray Data; pip install 'anomalymatch[ray]')",
    )
    p.add_argument(
        "--address",
        help="ray engine: the cluster (auto = the one this machine belongs to, HOST:PORT = its head; "
        "default $RAY_ADDRESS, else a new Ray instance on this machine)",
    )
    p.add_argument("--actors", type=int, help="ray engine: scoring actors (default one per GPU, else one per two CPUs)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from anomalymatch.catalogue import CatalogueError
    from anomalymatch.config import load_config
    from anomalymatch.model_ref import resolve_model, resolve_tracking_uri
    from anomalymatch.precision import choose_precision, scoring_providers
    from anomalymatch.scoring import OnnxScorer
    from serving.bulk import MANIFEST, BulkJob, JobMismatch, read_manifest
    from serving.bulk_top import catalogue_from_file, catalogue_from_store
    from serving.live_model import served_name

    config = load_config(
        args.config,
        {
            "data_dir": args.data_dir,
            "tracking.tracking_uri": args.tracking_uri,
            "serving.model": args.model,
            "serving.top_n": args.top,
            "serving.bulk_batch_size": args.batch_size,
            "workers": args.workers,
            "serving.bulk_shard_rows": args.shard_rows,
            "serving.providers": args.providers,
            "serving.precision": getattr(args, "precision", None),
        },
    )
    serving, out = config.serving, Path(args.out)
    if args.embeddings and getattr(args, "engine", "local") != "local":
        print("error: --embeddings is for the local engine (drop --engine or --embeddings)", file=sys.stderr)
        return 2
    try:  # a bad catalogue is refused before any image is scored
        if args.catalogue:
            catalogue = catalogue_from_file(args.catalogue, args.catalogue_id_column)
        else:
            catalogue = catalogue_from_store(config.labelstore, config.data_path)
    except (CatalogueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.engine != "ray" and (args.address or args.actors):
        print("error: --address and --actors are for --engine ray", file=sys.stderr)
        return 2
    ref = serving.model
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        pinned = manifest["model_version"]
        if args.model is None and pinned.isdigit():
            ref = pinned  # resume with the registry version the job started with, even if the alias moved
        print(
            f"resuming the job in {out}: {manifest['progress']['scored']} images already scored by model "
            f"version {pinned}"
        )
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri, config.data_path)
    model = resolve_model(ref, tracking_uri, config.data_path / "serving" / "models", config.tracking.registered_model)
    if args.engine == "ray":
        try:
            job = _ray_job(args, config, model, catalogue=catalogue)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        choice = choose_precision(
            model,
            serving.precision,
            scoring_providers(serving.providers),
            tracking_uri,
            config.data_path / "serving" / "models",
        )
        scorer = OnnxScorer(
            choice.path, providers=serving.providers or None, threads=serving.threads, spinning=False
        )  # decode threads share the CPU
        version = model.version or served_name(model.path)
        print(
            f"model {model.ref.text} -> version {version} ({choice.precision}: {choice.reason}) "
            f"on {', '.join(scorer.providers)}"
        )
        job = BulkJob(
            args.source,
            out,
            scorer,
            version,
            batch_size=serving.bulk_batch_size,
            workers=config.workers,
            shard_rows=serving.bulk_shard_rows,
            top_n=serving.top_n,
            progress_bar=not args.quiet,
            embeddings=args.embeddings,
            catalogue=catalogue,
        )
    try:
        progress = job.run()
    except JobMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{progress.status}: {progress.scored} scored, {progress.skipped} skipped of {progress.total} "
        f"({progress.images_per_second:.0f} images/s this run)"
    )
    if progress.status == "done":
        print(f"top candidates: {out / 'top.csv'}; errors: {out / 'errors.csv'}; shards: {out / 'shards'}")
    return 0 if progress.status == "done" else 1


def _ray_job(args: argparse.Namespace, config, model, **job_options):  # type: ignore[no-untyped-def]
    """The same job on a Ray cluster: decoding in CPU tasks, inference in an actor pool."""
    from serving.live_model import served_name
    from serving.ray_engine import RayBulkJob, RayOptions

    version = model.version or served_name(model.path)
    options = RayOptions(address=args.address, actors=args.actors or 0, batch_size=args.batch_size or 0)
    where = args.address or "$RAY_ADDRESS or a new local Ray instance"
    print(f"model {model.ref.text} -> version {version} on the ray cluster at {where}")
    return RayBulkJob(
        args.source,
        args.out,
        model.path,
        version,
        ray_options=options,
        shard_rows=config.serving.bulk_shard_rows,
        top_n=config.serving.top_n,
        progress_bar=not args.quiet,
        **job_options,
    )

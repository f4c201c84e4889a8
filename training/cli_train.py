"""``anomalymatch train``: a campaign on a user's images, labels CSV and unlabelled pool."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomalymatch.config import PRESETS, TRAIN_PRESET
from anomalymatch.preprocessing import VIEW_COUNTS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", action="append", required=True, help="source(s) holding the labelled images")
    p.add_argument("--labels", type=Path, required=True, help="CSV with a filename column and a label column")
    p.add_argument("--pool", action="append", help="unlabelled source(s) (default: unlabelled images of --images)")
    p.add_argument("--config", type=Path, help="YAML config (sections preprocess, fixmatch, cycle, tracking)")
    p.add_argument("--iterations", type=int, help="FixMatch iterations per cycle")
    p.add_argument("--cycles", type=int, help="cycles to run")
    p.add_argument("--size", type=int, help="image size (default: the preset's, else 64)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"a named training recipe (default: the config file's, else {TRAIN_PRESET}; README: the study)",
    )
    p.add_argument("--crop", type=float, help="centre-crop fraction before resizing")
    p.add_argument("--views", choices=tuple(VIEW_COUNTS), help="test-time views the model averages")
    p.add_argument(
        "--band-matrix",
        help='N-band images: 3 rows (R; G; B) of N weights, e.g. "0,0,1; 0,1,0; 1,0,0" (preprocess.band_matrix)',
    )
    p.add_argument(
        "--band-stretch",
        help="N-band images: one stretch for every band, or N comma-separated (preprocess.band_stretch)",
    )
    p.add_argument("--pool-sample", type=int, help="unlabelled images held in memory for training (0 = all)")
    p.add_argument("--top", type=int, help="how many top candidates to write")
    p.add_argument("--name", default="campaign", help="campaign name (its folder under the data folder)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted campaign of this name")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--out", type=Path, help="candidates CSV (default: in the campaign folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from anomalymatch.config import load_config
    from anomalymatch.labels import read_labels
    from anomalymatch.sources import open_sources
    from registry.register import describe_registration
    from training.active_learning import CHECKPOINT_FILE, STATE_FILE, candidates_csv, load_state, run_cycles
    from training.inputs import assemble_training_input
    from training.model import create_model
    from training.tracking import RunTracker
    from training.trainer import FixMatchTrainer

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = load_config(
        args.config,
        {
            "data_dir": args.data_dir,
            "cycle.iterations": args.iterations,
            "cycle.cycles": args.cycles,
            "preprocess.size": args.size,
            "preprocess.crop": args.crop,
            "preprocess.views": args.views,
            "preprocess.band_matrix": args.band_matrix,
            "preprocess.band_stretch": [x.strip() for x in args.band_stretch.split(",")] if args.band_stretch else None,
            "cycle.pool_sample": args.pool_sample,
            "cycle.top_candidates": args.top,
            "cycle.seed": args.seed,
            "preset": args.preset,
        },
        default_preset=TRAIN_PRESET,
    )
    progress = not args.quiet
    source = open_sources(args.images)
    labels = read_labels(args.labels, known_ids=source.ids)
    spec = config.preprocess
    inputs = assemble_training_input(
        labels=labels,
        labelled_source=source,
        pool_source=open_sources(args.pool) if args.pool else source,
        spec=spec,
        pool_sample=config.cycle.pool_sample,
        seed=config.cycle.seed,
        workers=config.workers,
        progress=progress,
    )
    images, ids, state = inputs.images, inputs.ids, inputs.state

    workdir = config.data_path / "campaigns" / args.name
    torch.manual_seed(config.cycle.seed)
    trainer = FixMatchTrainer(
        create_model(spec, pretrained=True), config.fixmatch, seed=config.cycle.seed, device=args.device
    )
    if args.resume:
        if not (workdir / STATE_FILE).is_file():
            raise SystemExit(f"nothing to resume: {workdir / STATE_FILE} does not exist")
        state = load_state(workdir / STATE_FILE, ids)
        if (workdir / CHECKPOINT_FILE).is_file():
            trainer.load_checkpoint(workdir / CHECKPOINT_FILE)
        print(f"resuming {args.name} after cycle {state.cycle} (iteration {trainer.iteration})", file=sys.stderr)
    tracker = RunTracker(config.tracking, config.data_path)
    outcome = run_cycles(
        trainer,
        images,
        ids,
        state,
        config,
        workdir,
        tracker=tracker,
        name=args.name,
        tags={"anomalymatch.labels_file": str(args.labels)},
        progress=progress,
        register=config.registry.enabled,
    )
    if not outcome.results:
        print(f"campaign {args.name} had already completed {state.cycle} cycle(s)", file=sys.stderr)
        return 0
    last = outcome.results[-1]
    out = args.out or workdir / "candidates.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(candidates_csv(last.candidates))
    print(f"top {len(last.candidates)} candidates of {last.n_pool} pool images: {out}")
    for image_id, score in last.candidates[:10]:
        print(f"  {score:.4f}  {image_id}")
    for reg in outcome.registrations:
        print(describe_registration(config.tracking.registered_model, reg))
    print(f"MLflow run {outcome.run_id} in {tracker.tracking_uri}")
    print(f"open the UI with: mlflow ui --backend-store-uri {tracker.tracking_uri}")
    return 0

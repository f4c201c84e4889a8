"""``anomalymatch retrain``: continuous retraining from the label store.

anomalymatch retrain --setup --campaign NAME --images SRC [--labels CSV]   # once: images + first labels
anomalymatch retrain --once [--force]     # one check; retrain if due (--force: now)
anomalymatch retrain --watch              # keep checking every retrain.poll_s seconds
anomalymatch retrain --status             # idle / queued / running / failed, the last version
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="check once and retrain if due (the default)")
    mode.add_argument("--watch", action="store_true", help="keep checking for new labels until interrupted")
    mode.add_argument("--status", action="store_true", help="print the retraining status as JSON and exit")
    mode.add_argument(
        "--setup", action="store_true", help="create the campaign over --images, register its images, import --labels"
    )
    p.add_argument("--force", action="store_true", help="with --once: retrain now, whatever the thresholds")
    p.add_argument("--config", type=Path, help="YAML config (sections retrain, cycle, fixmatch, registry, ...)")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--min-labels", type=int, help="retrain once this many new labels arrived (default 20)")
    p.add_argument(
        "--max-wait-minutes", type=float, help="or once the oldest new label waited this long (default 60; 0 = never)"
    )
    p.add_argument("--poll-s", type=float, help="--watch: seconds between checks (default 10)")
    p.add_argument("--campaign", help="label store campaign (default: the only one)")
    p.add_argument("--iterations", type=int, help="FixMatch iterations per retrain (default cycle.iterations)")
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--images", action="append", help="--setup: the campaign's image source(s)")
    p.add_argument("--labels", type=Path, help="--setup: a labels CSV to import (reference or anomalymatch format)")
    p.add_argument("--user", default="", help="--setup: user recorded on imported labels without one")
    p.add_argument("--size", type=int, help="--setup: image size the campaign trains at (default preprocess.size)")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the service's watcher stops with it
    p.add_argument("--quiet", action="store_true", help="log warnings only")


def _config(args: argparse.Namespace):
    from anomalymatch.config import load_config

    return load_config(
        args.config,
        {
            "data_dir": args.data_dir,
            "retrain.min_labels": args.min_labels,
            "retrain.max_wait_minutes": args.max_wait_minutes,
            "retrain.poll_s": args.poll_s,
            "retrain.campaign": args.campaign,
            "retrain.device": args.device,
            "cycle.iterations": args.iterations,
            "preprocess.size": args.size,
        },
    )


def _setup(args: argparse.Namespace, config, store) -> int:
    from anomalymatch.campaign_images import setup_campaign

    if not args.campaign or not args.images:
        raise SystemExit("--setup needs --campaign NAME and --images SOURCE (repeat --images for several)")
    campaign, added = setup_campaign(store, args.campaign, args.images, config.preprocess)
    print(f"campaign {campaign.name}: {added} new image(s) registered from {list(campaign.sources)}")
    if args.labels:
        result = store.import_csv(args.labels, user=args.user)
        print(
            f"{args.labels}: {result.added} label(s) added, {result.skipped} skipped"
            f"{' (already imported)' if result.replayed else ''}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from anomalymatch.labelstore import LabelStore

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = _config(args)
    store = LabelStore.from_config(config.labelstore, config.data_path)
    if args.setup:
        return _setup(args, config, store)
    from training.retrain import RetrainWatcher, describe_outcome

    watcher = RetrainWatcher(config, store, progress=not args.quiet and not args.watch)
    if args.status:
        print(json.dumps(watcher.status(), indent=1))
        return 0
    if args.watch:
        watcher.watch(parent_pid=args.parent_pid)
        return 0
    outcome = watcher.run_once(force=args.force)
    print(describe_outcome(outcome))
    return 1 if outcome.failed else 0

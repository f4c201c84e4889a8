"""``anomalymatch coldstart``: a campaign's first ranking, before any anomaly is labelled.

anomalymatch retrain --setup --campaign NAME --images SRC      # once: register the campaign's images
anomalymatch coldstart                                         # rank the pool by outlierness
anomalymatch coldstart --examples odd1.png odd2.fits           # or by similarity to examples of what you seek
anomalymatch serve                                             # label from the queue; FixMatch takes over
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--examples",
        nargs="+",
        metavar="SRC",
        help="images (files, folders, zips, HDF5) of what you look for: rank by similarity to them",
    )
    p.add_argument("--config", type=Path, help="YAML config (sections coldstart, retrain, cycle, registry, ...)")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--campaign", help="label store campaign (default: the only one)")
    p.add_argument("--k", type=int, help="neighbours for outlierness (default coldstart.k = 10)")
    p.add_argument("--reference", type=int, help="pool images the outlierness compares with (default 2048)")
    p.add_argument("--pool-sample", type=int, help="campaign images embedded and ranked (default cycle.pool_sample)")
    p.add_argument("--quiet", action="store_true", help="log warnings only, no progress bars")


def run(args: argparse.Namespace) -> int:
    from anomalymatch.config import load_config
    from anomalymatch.labelstore import LabelStore
    from training.coldstart import run_coldstart

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = load_config(
        args.config,
        {
            "data_dir": args.data_dir,
            "retrain.campaign": args.campaign,
            "coldstart.k": args.k,
            "coldstart.reference": args.reference,
            "cycle.pool_sample": args.pool_sample,
        },
    )
    store = LabelStore.from_config(config.labelstore, config.data_path)
    outcome = run_coldstart(config, store, examples=args.examples, progress=not args.quiet)
    how = "similarity to the examples" if outcome.mode == "examples" else "outlierness"
    print(
        f"cold start: version {outcome.version} ranks {outcome.n_pool} images by {how}; "
        f"{'promoted to champion' if outcome.promoted else 'not promoted'} ({outcome.reason})"
    )
    return 0

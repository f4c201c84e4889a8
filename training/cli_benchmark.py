"""``anomalymatch benchmark``: the paper's protocol on the named cases or any labelled image set."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from anomalymatch.config import PRESETS, TRAIN_PRESET
from anomalymatch.preprocessing import VIEW_COUNTS


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.benchmark import CASES, METHODS

    p.add_argument("--case", action="append", choices=sorted(CASES), help="named case (repeatable)")
    p.add_argument("--data-root", type=Path, help="folder holding the named cases' data (default ../shared/data)")
    p.add_argument("--images", help="any labelled set: image folder, zip or HDF5")
    p.add_argument("--labels", type=Path, help="its labels CSV (filename column + class column)")
    p.add_argument("--anomaly-class", action="append", help="class value(s) that count as anomaly (repeatable)")
    p.add_argument("--class-column", default="class_name", help="class column of --labels (default class_name)")
    p.add_argument("--n-anomalies", type=int, help="labelled anomalies at the start (default per case, else 5)")
    p.add_argument("--n-nominal", type=int, help="labelled nominal images at the start (default per case, else 495)")
    p.add_argument("--pool-size", type=int, help="sample the pool to exactly this size")
    p.add_argument("--anomaly-fraction", type=float, help="anomaly share of the sampled pool")
    p.add_argument("--crop", type=float, help="centre-crop fraction applied before resizing")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--size", type=int, help="image size (default: the preset's, else 64)")
    p.add_argument("--views", choices=tuple(VIEW_COUNTS), help="test-time views (default: preset, else plain)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"a named training recipe (default: the config file's, else {TRAIN_PRESET}; README: the study)",
    )
    p.add_argument("--iterations", type=int, help="FixMatch iterations per cycle (default: the preset's, else 100)")
    p.add_argument("--cycles", type=int, default=3, help="active-learning cycles (default 3)")
    p.add_argument("--picks", type=int, default=10, help="oracle picks per class per cycle (default 10)")
    p.add_argument("--method", action="append", choices=METHODS, help="method(s) (repeatable; default fixmatch)")
    p.add_argument("--config", type=Path, help="YAML config with fixmatch/cycle/tracking sections")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--workers", type=int, default=0, help="decode threads (default: one per core)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", type=Path, help="write results JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cases(args: argparse.Namespace):
    from training.benchmark import CASES, BenchmarkCase

    cases = [CASES[name] for name in (args.case or [])]
    if args.images:
        if not args.labels or not args.anomaly_class:
            raise SystemExit("--images needs --labels and at least one --anomaly-class")
        cases.append(
            BenchmarkCase(
                Path(args.images).stem,
                str(Path(args.images).resolve()),
                str(args.labels.resolve()),
                tuple(args.anomaly_class),
                class_column=args.class_column,
            )
        )
    if not cases:
        raise SystemExit("name a --case or give --images/--labels/--anomaly-class")
    overrides = {
        k: getattr(args, k)
        for k in ("n_anomalies", "n_nominal", "pool_size", "anomaly_fraction", "crop")
        if getattr(args, k) is not None
    }
    return [dataclasses.replace(c, **overrides) for c in cases]


def run(args: argparse.Namespace) -> int:
    from anomalymatch.config import load_config
    from training.benchmark import default_data_root, environment, load_case, run_method, summarise
    from training.trainer import select_device

    cases = _cases(args)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    methods = args.method or ["fixmatch"]
    config = load_config(
        args.config,
        {
            "cycle.iterations": args.iterations,
            "cycle.cycles": args.cycles,
            "cycle.picks": args.picks,
            "preprocess.size": args.size,
            "preprocess.views": args.views,
            "preset": args.preset,
        },
        default_preset=TRAIN_PRESET,
    )
    size = config.preprocess.size
    data_root = args.data_root or default_data_root()
    device = str(select_device(args.device))
    tracker = None
    if not args.no_mlflow:
        from training.tracking import RunTracker

        tracker = RunTracker(
            dataclasses.replace(config.tracking, experiment="anomalymatch-benchmark"), config.data_path
        )
    runs, datasets = [], []
    for case in cases:
        t0 = time.perf_counter()
        data = load_case(case, size, data_root, args.workers, progress=not args.quiet)
        print(
            f"{case.name}: {len(data.ids)} images decoded at {size}px in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
        datasets.append(
            {"case": case.name, "source": case.images, "n_images": int(len(data.ids)), "classes": data.classes}
        )
        case_config = config.replace(preprocess=dataclasses.replace(config.preprocess, crop=case.crop))
        for method in methods:
            for seed in seeds:
                t0 = time.perf_counter()
                record = run_method(method, data, seed, case_config, device, tracker, progress=not args.quiet)
                last = record["cycles"][-1]
                print(
                    f"{case.name} {method} seed {seed}: AUROC {last['auroc']:.3f} AUPRC {last['auprc']:.3f} "
                    f"P@1% {last['precision_at_1pct']:.3f} ({time.perf_counter() - t0:.0f}s)",
                    file=sys.stderr,
                )
                runs.append(record)
    cfg = config.cycle
    protocol = {
        "cases": [dataclasses.asdict(c) for c in cases],
        "seeds": seeds,
        "methods": methods,
        "size": size,
        "preset": config.preset,
        "iterations": cfg.iterations,
        "cycles": cfg.cycles,
        "picks": cfg.picks,
        "fixmatch": dataclasses.asdict(config.fixmatch),
    }
    result = {
        "protocol": protocol,
        "dataset": datasets[0] if len(datasets) == 1 else {"source": "several", "cases": datasets},
        "environment": environment(device),
        "runs": runs,
        "summary": summarise(runs),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"results written to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0

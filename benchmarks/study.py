"""The detection-quality study: variants of the training recipe on the paper's protocol, one run at a time,
every run logged to MLflow (experiment ``anomalymatch-study``) and appended to a JSON-lines file as it
finishes, so a study stopped midway loses nothing and a rerun skips what is already there.

    .venv/bin/python benchmarks/study.py --variants paper,lpft --cases cifar10-airplane,gz1-edge_on \
        --seeds 0 --out benchmarks/results/study/screen.jsonl
    .venv/bin/python benchmarks/study.py --summary benchmarks/results/study/screen.jsonl

A variant is a name and a set of config overrides (``VARIANTS`` below); ``size`` is the image size.
Frozen-feature baselines (linprobe, knn) are variants too, with ``method``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (method, size, config overrides)
LPFT = {"fixmatch.head_init": "linprobe", "fixmatch.backbone_lr_scale": 0.1}
VARIANTS: dict[str, tuple[str, int, dict]] = {
    "paper": ("fixmatch", 64, {}),
    "linprobe": ("linprobe", 64, {}),
    "knn": ("knn", 64, {}),
    "linprobe-96": ("linprobe", 96, {}),
    "linprobe-128": ("linprobe", 128, {}),
    "linprobe-160": ("linprobe", 160, {}),
    "linprobe-224": ("linprobe", 224, {}),
    "supervised": ("supervised", 64, {}),
    "lp-head": ("fixmatch", 64, {"fixmatch.head_init": "linprobe"}),
    "lpft": ("fixmatch", 64, LPFT),
    "lpft-bnfrozen": ("fixmatch", 64, {**LPFT, "fixmatch.bn": "frozen"}),
    "lpft-cosine": ("fixmatch", 64, {**LPFT, "fixmatch.lr_schedule": "cosine"}),
    "lpft-lr0.01": ("fixmatch", 64, {**LPFT, "fixmatch.backbone_lr_scale": 0.01}),
    "lpft-thr0.8": ("fixmatch", 64, {**LPFT, "fixmatch.threshold": 0.8}),
    "lpft-nou": ("supervised", 64, LPFT),
    "bnfrozen": ("fixmatch", 64, {"fixmatch.bn": "frozen"}),
    "lpft-96": ("fixmatch", 96, LPFT),
    "lpft-128": ("fixmatch", 128, LPFT),
    "lpft-ema-warmup": ("fixmatch", 64, {**LPFT, "fixmatch.ema_warmup": True}),
    "ema-warmup": ("fixmatch", 64, {"fixmatch.ema_warmup": True}),
    "lp-head-soft": ("fixmatch", 64, {"fixmatch.head_init": "linprobe", "fixmatch.probe_margin": 1.0}),
    "paper-96": ("fixmatch", 96, {}),
    "paper-96-freeze3": ("fixmatch", 96, {"fixmatch.freeze_blocks": 3}),
    "balanced": ("fixmatch", 96, {"preset": "balanced"}),
    "balanced-d4": ("fixmatch", 96, {"preset": "balanced", "preprocess.views": "d4"}),
    "balanced-200it": ("fixmatch", 96, {"preset": "balanced", "cycle.iterations": 200}),
    "balanced-cosine": ("fixmatch", 96, {"preset": "balanced", "fixmatch.lr_schedule": "cosine"}),
    "balanced-uratio2": ("fixmatch", 96, {"preset": "balanced", "fixmatch.uratio": 2}),
    "balanced-emateacher": ("fixmatch", 96, {"preset": "balanced", "fixmatch.teacher": "ema"}),  # mean teacher
    # an EMA whose horizon (about 20 steps) is a fifth of a 100-iteration cycle rather than all of it
    "balanced-ema95": ("fixmatch", 96, {"preset": "balanced", "fixmatch.ema_decay": 0.95}),
    "balanced-supervised": ("supervised", 96, {"preset": "balanced"}),  # no unlabelled term
    "balanced-supervised-300it": ("supervised", 96, {"preset": "balanced", "cycle.iterations": 300}),  # `fast`
    "supervised-128-freeze3": ("supervised", 128, {"fixmatch.freeze_blocks": 3}),
    "paper-128-freeze3": ("fixmatch", 128, {"fixmatch.freeze_blocks": 3}),
    "lp-head-cosine": ("fixmatch", 64, {"fixmatch.head_init": "linprobe", "fixmatch.lr_schedule": "cosine"}),
    "lp-head-bnfrozen": ("fixmatch", 64, {"fixmatch.head_init": "linprobe", "fixmatch.bn": "frozen"}),
    "lp-head-96": ("fixmatch", 96, {"fixmatch.head_init": "linprobe"}),
    "lp-head-96-freeze3": ("fixmatch", 96, {"fixmatch.head_init": "linprobe", "fixmatch.freeze_blocks": 3}),
    "balanced-blend": ("fixmatch", 96, {"fixmatch.freeze_blocks": 3, "fixmatch.head_refit": "blend"}),
    "paper-blend": ("fixmatch", 64, {"fixmatch.head_refit": "blend"}),
    "cached-160-f5": ("fixmatch", 160, {"fixmatch.freeze_blocks": 5, "fixmatch.cached_views": 2}),
    "cached-224-f5": ("fixmatch", 224, {"fixmatch.freeze_blocks": 5, "fixmatch.cached_views": 2}),
    "cached-128-f4": ("fixmatch", 128, {"fixmatch.freeze_blocks": 4, "fixmatch.cached_views": 2}),
    "cached-128-f3": ("fixmatch", 128, {"fixmatch.freeze_blocks": 3, "fixmatch.cached_views": 2}),
    "cached-96-f3": ("fixmatch", 96, {"fixmatch.freeze_blocks": 3, "fixmatch.cached_views": 2}),
    "balanced-pull": ("fixmatch", 96, {"fixmatch.freeze_blocks": 3, "fixmatch.pretrained_pull": 1.0}),
    "balanced-weakbn": ("fixmatch", 96, {"fixmatch.freeze_blocks": 3, "fixmatch.weak_bn": "running"}),
    "balanced-lp-soft": (  # the balanced preset with the tempered linear-probe head
        "fixmatch",
        96,
        {"fixmatch.freeze_blocks": 3, "fixmatch.head_init": "linprobe", "fixmatch.probe_margin": 1.0},
    ),
}


def study_case(name: str, data_dir: str):
    """The protocol's case ``name`` and its data root; ``first-bent`` is the demo's FIRST radio galaxies (from the
    PyPI package, converted once under ``data_dir``) with the demo's split: 5 Bent + 50 others labelled, the
    rest (16% Bent) the pool, picks as in the other cases."""
    from training.benchmark import CASES, BenchmarkCase, default_data_root

    if name != "first-bent":
        return CASES[name], default_data_root()
    from loop.demo import prepare_first_galaxies

    h5, classes = prepare_first_galaxies(Path(data_dir).resolve() / "demo")
    return BenchmarkCase(name, str(h5), str(classes), ("Bent",), n_anomalies=5, n_nominal=50), Path("/")


def run_dir(data_dir: str, variant: str, case: str, seed: int) -> Path:
    """Where a study run keeps its final checkpoint and campaign state (read by study_posthoc.py)."""
    return Path(data_dir) / "study" / variant / f"{case}-{seed}"


def read_records(paths: list[str | Path]) -> list[dict]:
    """The records of these JSON-lines files (missing files: none)."""
    return [
        json.loads(line)
        for path in map(Path, paths)
        if path.is_file()
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def by_case_and_variant(paths: list[str]) -> dict[tuple[str, str], list[dict]]:
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in read_records(paths):
        rows.setdefault((r["case"], r["variant"]), []).append(r)
    return rows


def done_keys(path: Path) -> set[tuple[str, str, int]]:
    return {(r["variant"], r["case"], r["seed"]) for r in read_records([path])}


def run(args: argparse.Namespace) -> None:
    import dataclasses

    import torch

    from anomalymatch.config import load_config
    from training.benchmark import load_case, run_method
    from training.tracking import RunTracker

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    loaded: dict[tuple[str, int], object] = {}
    for name in variants:  # variant by variant, so each variant's screen is complete early
        method, size, overrides = VARIANTS[name]
        for case_name in args.cases.split(","):
            case, data_root = study_case(case_name, args.data_dir)
            for seed in seeds:
                if (name, case_name, seed) in done:
                    continue
                if (case_name, size) not in loaded:
                    if any(s != size for _, s in loaded):
                        loaded.clear()  # decoded cases of one size in memory at a time
                    loaded[(case_name, size)] = load_case(case, size, data_root)
                data = loaded[(case_name, size)]
                config = load_config(
                    None,
                    {
                        "cycle.iterations": args.iterations,
                        "cycle.cycles": args.cycles,
                        "cycle.picks": 10,
                        "preprocess.size": size,
                        "preprocess.crop": case.crop,
                        "data_dir": args.data_dir,
                        **overrides,
                    },
                )
                tracker = RunTracker(
                    dataclasses.replace(config.tracking, experiment="anomalymatch-study"), config.data_path
                )
                t0 = time.process_time()
                w0 = time.perf_counter()
                workdir = run_dir(args.data_dir, name, case_name, seed)
                record = run_method(method, data, seed, config, "cpu", tracker, workdir=workdir)
                record.update(
                    variant=name,
                    size=size,
                    overrides=overrides,
                    cpu_minutes=(time.process_time() - t0) / 60,
                    wall_minutes=(time.perf_counter() - w0) / 60,
                )
                with out.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                last = record["cycles"][-1]
                print(
                    f"{name:16s} {case_name:18s} seed {seed}: AUROC {last['auroc']:.3f} AUPRC {last['auprc']:.3f} "
                    f"P@1% {last['precision_at_1pct']:.3f}  {record['cpu_minutes']:.1f} CPU-min",
                    flush=True,
                )


def summary(paths: list[str]) -> None:
    import numpy as np

    rows = by_case_and_variant(paths)
    print("| case | variant | seeds | AUROC | AUPRC | precision@1% | CPU-min |")
    print("|---|---|---|---|---|---|---|")

    def ms(runs: list[dict], key: str) -> str:
        v = np.array([r["cycles"][-1][key] for r in runs], dtype=float)
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    for (case, variant), runs in sorted(rows.items()):
        cpu = np.mean([r["cpu_minutes"] for r in runs])
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        metrics = " | ".join(ms(runs, key) for key in ("auroc", "auprc", "precision_at_1pct"))
        print(f"| {case} | {variant} | {seeds} | {metrics} | {cpu:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="paper,linprobe")
    p.add_argument("--cases", default="cifar10-airplane,gz1-edge_on")
    p.add_argument("--seeds", default="0")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=".anomalymatch")
    p.add_argument("--out", default="benchmarks/results/study/screen.jsonl")
    p.add_argument("--summary", nargs="*", help="print the table of these JSON-lines files instead of running")
    args = p.parse_args()
    if args.summary:
        summary(args.summary)
    else:
        run(args)


if __name__ == "__main__":
    main()

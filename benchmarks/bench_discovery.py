"""Discovery from zero labels: true anomalies found against labels spent, on the benchmark cases.

The whole protocol set of a case (its labelled set and pool, BENCHMARK.md) starts unlabelled. Each round a
simulated expert labels the top ``--per-round`` (20) images of the current ranking; the curve counts the
anomalies among everything labelled so far. Strategies:

- ``random``: the archive in random order (the base rate).
- ``outlier``: the cold-start ranking only (``training.coldstart``: outlierness in the ImageNet features,
  one minus the mean cosine similarity to the 10 nearest of 2,048 sampled images); it needs no labels, so
  it never changes.
- ``outlier+similar``: outlierness until the first anomaly is found, then the images most like any found
  anomaly (the web app's ``similar`` queue); no training.
- ``coldstart``: what the product does. Outlierness until ``retrain.min_anomalies`` (3) anomalies are
  labelled, then FixMatch takes over (the retrain watcher's handover: ImageNet weights, the default
  recipe, ``cycle.iterations`` per round, continuing across rounds) and ranks the rest.

    .venv/bin/python benchmarks/bench_discovery.py --seeds 0,1,2 --out benchmarks/results/discovery.jsonl
    .venv/bin/python benchmarks/bench_discovery.py --summary benchmarks/results/discovery.jsonl \
        --plot docs/discovery.png

Results are appended per (case, seed, strategy) as they finish; a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = ("random", "outlier", "outlier+similar", "coldstart")
LABELS = {
    "random": "random order",
    "outlier": "outlierness only",
    "outlier+similar": "outlierness, then like found anomalies",
    "coldstart": "cold start, FixMatch after 3 anomalies",
}
COLOURS = {"random": "tab:grey", "outlier": "tab:orange", "outlier+similar": "tab:green", "coldstart": "tab:red"}


def _label_top(order: np.ndarray, labelled: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` not-yet-labelled entries of ``order`` (positions into the case's universe)."""
    return order[~labelled[order]][:n]


def run_strategy(
    strategy: str,
    universe: np.ndarray,
    truth: np.ndarray,
    emb: np.ndarray,
    data,
    config,
    seed: int,
    rounds: int,
    per_round: int,
) -> dict:
    """One curve: ``found[r]`` = anomalies among the first ``(r + 1) * per_round`` labels."""
    from anomalymatch.embedding_scores import example_similarity, outlier_scores
    from anomalymatch.metrics import rank_order

    n = len(universe)
    labelled = np.zeros(n, dtype=bool)
    ids = data.ids[universe]
    rng = np.random.default_rng(seed)
    reference = emb[np.sort(rng.choice(n, size=min(config.coldstart.reference, n), replace=False))]
    outlier_order = rank_order(outlier_scores(emb, reference, config.coldstart.k), ids)
    found: list[int] = []
    handover_round = None
    trainer = None
    t0 = time.process_time()
    for r in range(rounds):
        anomalies = np.flatnonzero(labelled & (truth == 1))
        if strategy == "random":
            order = rng.permutation(n)
        elif (
            strategy == "outlier"
            or len(anomalies) == 0
            or (strategy == "coldstart" and len(anomalies) < config.retrain.min_anomalies)
        ):
            order = outlier_order
        elif strategy == "outlier+similar":
            order = rank_order(example_similarity(emb, emb[anomalies]), ids)
        else:  # coldstart, handed over to FixMatch
            order, trainer = _fixmatch_order(trainer, universe, labelled, truth, data, config, seed)
            handover_round = r if handover_round is None else handover_round
        labelled[_label_top(order, labelled, per_round)] = True
        found.append(int((labelled & (truth == 1)).sum()))
        print(f"  {strategy} round {r + 1}: {found[-1]} found", flush=True)
    return {
        "found": found,
        "handover_round": handover_round,
        "cpu_minutes": (time.process_time() - t0) / 60,
    }


def _fixmatch_order(trainer, universe, labelled, truth, data, config, seed):
    """One retrain (``cycle.iterations`` FixMatch steps, continuing ``trainer``) on the labels so far, then
    the ranking of the still unlabelled images (labelled ones are placed last)."""
    import torch

    from anomalymatch.metrics import rank_order
    from training.cycle import LabelledPool, run_cycle
    from training.model import create_model
    from training.trainer import FixMatchTrainer

    if trainer is None:
        torch.manual_seed(seed)
        trainer = FixMatchTrainer(
            create_model(config.preprocess, pretrained=True), config.fixmatch, seed=seed, device="cpu"
        )
    lab, pool = universe[labelled], universe[~labelled]
    state = LabelledPool(lab, truth[labelled], pool)
    result = run_cycle(trainer, data.images, data.ids, state, config.cycle)
    order_in_pool = rank_order(result.pool_scores, data.ids[pool])
    return np.concatenate([np.flatnonzero(~labelled)[order_in_pool], np.flatnonzero(labelled)]), trainer


def done_keys(path: Path) -> set[tuple[str, int, str]]:
    if not path.is_file():
        return set()
    return {(r["case"], r["seed"], r["strategy"]) for r in map(json.loads, path.read_text().splitlines()) if r}


def run(args: argparse.Namespace) -> None:
    import torch

    from anomalymatch.config import load_config
    from training.benchmark import CASES, default_data_root, frozen_embeddings, load_case, split_protocol
    from training.model import create_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    strategies = args.strategies.split(",")
    loaded: dict[str, tuple] = {}
    for seed in map(int, args.seeds.split(",")):  # seed-major: every case has a curve early
        for case_name in args.cases.split(","):
            todo = [st for st in strategies if (case_name, seed, st) not in done]
            if not todo:
                continue
            case = CASES[case_name]
            if case_name not in loaded:
                data = load_case(case, args.size, default_data_root())
                overrides = {
                    "preprocess.size": args.size,
                    "preprocess.crop": case.crop,
                    "cycle.iterations": args.iterations,
                    "data_dir": args.data_dir,
                }
                config = load_config(None, overrides)
                loaded[case_name] = (data, config, create_model(config.preprocess, pretrained=True))
            data, config, model = loaded[case_name]
            lab, _, pool = split_protocol(
                data.is_anomaly, case.n_anomalies, case.n_nominal, case.pool_size, case.anomaly_fraction, seed
            )
            universe = np.sort(np.concatenate([lab, pool]))
            emb = frozen_embeddings(data, model, universe, "cpu")[universe]
            truth = data.is_anomaly[universe].astype(np.int64)
            for strategy in todo:
                w0 = time.perf_counter()
                record = run_strategy(strategy, universe, truth, emb, data, config, seed, args.rounds, args.per_round)
                record.update(
                    case=case_name,
                    seed=seed,
                    strategy=strategy,
                    n=len(universe),
                    n_anomalies=int(truth.sum()),
                    per_round=args.per_round,
                    size=args.size,
                    iterations=args.iterations,
                    wall_minutes=(time.perf_counter() - w0) / 60,
                )
                with out.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(
                    f"{case_name:18s} seed {seed} {strategy:16s} found {record['found']} "
                    f"(handover round {record['handover_round']}) {record['cpu_minutes']:.1f} CPU-min",
                    flush=True,
                )


def summary(paths: list[str], plot: str | None, at: tuple[int, ...] = (20, 60, 100, 200)) -> None:
    rows: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.setdefault((r["case"], r["strategy"]), []).append(r)
    cases = sorted({c for c, _ in rows})
    print("| case | strategy | seeds | " + " | ".join(f"found @{k}" for k in at) + " | handover at | CPU-min |")
    print("|---|---|---|" + "---|" * (len(at) + 2))
    for case in cases:
        for strategy in STRATEGIES:
            runs = rows.get((case, strategy), [])
            if not runs:
                continue
            per = runs[0]["per_round"]
            cells = []
            for k in at:
                v = [r["found"][k // per - 1] for r in runs if len(r["found"]) >= k // per]
                cells.append(f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else (f"{v[0]}" if v else "-"))
            hand = [r["handover_round"] for r in runs if r["handover_round"] is not None]
            hand_s = f"{(np.mean(hand) + 0) * per:.0f} labels" if hand else "-"
            cpu = np.mean([r["cpu_minutes"] for r in runs])
            print(f"| {case} | {strategy} | {len(runs)} | " + " | ".join(cells) + f" | {hand_s} | {cpu:.1f} |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.4), squeeze=False)
        for ax, case in zip(axes[0], cases):
            for strategy in STRATEGIES:
                runs = rows.get((case, strategy), [])
                if not runs:
                    continue
                per = runs[0]["per_round"]
                curves = np.array([r["found"] for r in runs], dtype=float)
                x = per * np.arange(1, curves.shape[1] + 1)
                ax.plot(x, curves.mean(0), label=LABELS[strategy], color=COLOURS[strategy])
                if len(runs) > 1:
                    ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15, color=COLOURS[strategy])
            ax.set(title=case, xlabel="labels spent", ylabel="anomalies found")
        handles = {}
        for ax in axes[0]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles), fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        fig.savefig(plot, dpi=110)
        print(f"plot: {plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="gz1-edge_on,gz1-merger,cifar10-airplane,cifar10-cat")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=".anomalymatch")
    p.add_argument("--out", default="benchmarks/results/discovery.jsonl")
    p.add_argument("--summary", nargs="*", help="print the table of these JSON-lines files instead of running")
    p.add_argument("--plot", help="with --summary: write the curves to this PNG")
    args = p.parse_args()
    if args.summary:
        summary(args.summary, args.plot)
    else:
        run(args)


if __name__ == "__main__":
    main()

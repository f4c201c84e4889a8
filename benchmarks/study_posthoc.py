"""Scoring variants of the study's trained models, compared on the same model and labels: each study run keeps
its final checkpoint and campaign state (``<data-dir>/study/<variant>/<case>-<seed>/``), and this script
rescores that run's final pool in several ways. The comparison is paired (one trained model, one labelled
set, one pool), so it separates scoring changes far more finely than reruns with other seeds would.

    .venv/bin/python benchmarks/study_posthoc.py --variant balanced --cases gz1-edge_on --seeds 0 \
        --out benchmarks/results/study/posthoc.jsonl
    .venv/bin/python benchmarks/study_posthoc.py --summary benchmarks/results/study/posthoc.jsonl

Scorers (higher = more anomalous; every one uses only the final labelled set, never the pool's truth):
- ``prob``: the EMA model's softmax probability, as the protocol scores (float32, so it saturates at 1.0)
- ``margin``: its logit difference (class 1 - class 0), the same ranking without the saturation
- ``flip4`` / ``d4``: the margin averaged over the 4 flips / the 8 flips and transposes of each image
- ``lp-frozen``: the linear probe on the pretrained network's embeddings (the frozen baseline)
- ``lp-trained``: the same probe on the trained model's embeddings
- ``fuse-frozen`` / ``fuse-trained``: the margin and that probe's logit, each standardised over the pool, summed
- ``raw``: the margin of the trained network itself (the live weights at the end of training), not its EMA
- ``smooth`` / ``smooth-frozen``: the standardised margin averaged half and half with the mean of its 10
  nearest pool neighbours' (cosine, on the trained / the pretrained network's embeddings): a score smoothed
  over the pool's neighbourhood graph
Only the final cycle is rescored: the oracle's picks in earlier cycles came from the protocol's own scores.
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

SCORERS = (
    "prob",
    "margin",
    "flip4",
    "d4",
    "lp-frozen",
    "lp-trained",
    "fuse-frozen",
    "fuse-trained",
    "raw",
    "smooth",
    "smooth-frozen",
)
SMOOTH_K = 10


def logit_margin(logits):  # type: ignore[no-untyped-def]
    """Class 1's logit minus class 0's (a torch tensor or a NumPy array): the ranking without softmax saturation."""
    return logits[:, 1] - logits[:, 0]


def standardise(s: np.ndarray) -> np.ndarray:
    return (s - s.mean()) / max(float(s.std()), 1e-12)


def neighbour_mean(emb: np.ndarray, values: np.ndarray, k: int = SMOOTH_K, batch: int = 2048) -> np.ndarray:
    """Each row's mean of ``values`` over its ``k`` nearest other rows by cosine similarity of ``emb``."""
    from anomalymatch.embedding_scores import l2_normalise

    e = l2_normalise(emb)
    out = np.empty(len(e))
    for start in range(0, len(e), batch):
        sim = e[start : start + batch] @ e.T
        sim[np.arange(len(sim)), start + np.arange(len(sim))] = -np.inf  # not its own neighbour
        nearest = np.argpartition(-sim, k, axis=1)[:, :k]
        out[start : start + batch] = values[nearest].mean(axis=1)
    return out


def rescore(
    model,
    raw,
    frozen,
    images: np.ndarray,
    labelled: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    seed: int,
    views: bool,
):
    """The scorers' pool scores for one trained model (``model``: its EMA; ``raw``: its live weights) and the
    pretrained one (``frozen``); the 4- and 8-view scorers only with ``views`` (they cost 8 more passes)."""
    import torch

    from anomalymatch.embedding_scores import linear_probe_scores
    from training.model import symmetry_views
    from training.trainer import to_nchw

    model.eval()
    raw.eval()
    frozen.eval()
    head = model.backbone.get_classifier()

    @torch.inference_mode()
    def passes(idx: np.ndarray, tta: bool) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in ("logits", "emb", "flip4", "d4", "frozen", "raw")}
        for start in range(0, len(idx), 256):
            x = to_nchw(images[idx[start : start + 256]]).contiguous(memory_format=torch.channels_last)
            emb = model.embed(x)
            logits = head(emb)
            out["logits"].append(logits.numpy())
            out["emb"].append(emb.numpy())
            out["frozen"].append(frozen.embed(x).numpy())
            out["raw"].append(logit_margin(raw(x)).numpy())
            if tta:
                turned = [v.contiguous(memory_format=torch.channels_last) for v in symmetry_views(x, "d4")]
                margins = [logit_margin(model(v)) for v in turned]  # one view each: 4 flips first
                out["flip4"].append(torch.stack(margins[:4]).mean(0).numpy())
                out["d4"].append(torch.stack(margins).mean(0).numpy())
        return {k: np.concatenate(v) for k, v in out.items() if v}

    lab, po = passes(labelled, tta=False), passes(pool, tta=views)
    margin = logit_margin(po["logits"])
    prob = torch.softmax(torch.from_numpy(po["logits"]), dim=1)[:, 1].numpy()
    lp_frozen = linear_probe_scores(lab["frozen"], y, po["frozen"], seed=seed)
    lp_trained = linear_probe_scores(lab["emb"], y, po["emb"], seed=seed)
    z = standardise(margin)
    return {
        "prob": prob,
        "margin": margin,
        **({"flip4": po["flip4"], "d4": po["d4"]} if views else {}),
        "lp-frozen": lp_frozen,
        "lp-trained": lp_trained,
        "fuse-frozen": z + standardise(lp_frozen),
        "fuse-trained": z + standardise(lp_trained),
        "raw": po["raw"],
        "smooth": 0.5 * z + 0.5 * neighbour_mean(po["emb"], z),
        "smooth-frozen": 0.5 * z + 0.5 * neighbour_mean(po["frozen"], z),
    }


def run(args: argparse.Namespace) -> None:
    import torch
    from safetensors import safe_open

    from anomalymatch.metrics import compute_metrics
    from anomalymatch.preprocessing import PreprocessSpec
    from benchmarks.study import VARIANTS, done_keys, run_dir, study_case
    from training.active_learning import CHECKPOINT_FILE, STATE_FILE, load_state
    from training.benchmark import load_case
    from training.model import create_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = done_keys(out)
    _, size, _ = VARIANTS[args.variant]
    for case_name in args.cases.split(","):
        case, data_root = study_case(case_name, args.data_dir)
        data = None
        for seed in (int(s) for s in args.seeds.split(",")):
            workdir = run_dir(args.data_dir, args.variant, case_name, seed)
            if (args.variant, case_name, seed) in done or not (workdir / CHECKPOINT_FILE).is_file():
                continue
            t0 = time.perf_counter()
            data = data or load_case(case, size, data_root)
            state = load_state(workdir / STATE_FILE, data.ids)
            # one read: the spec, the EMA weights and the live weights
            with safe_open(str(workdir / CHECKPOINT_FILE), framework="pt") as fh:
                spec = PreprocessSpec.from_json(fh.metadata()["preprocess"])  # the run's own, views included
                weights = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(("ema.", "model."))}
            model, raw = create_model(spec, pretrained=False), create_model(spec, pretrained=False)
            model.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("ema.")})
            raw.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")})
            frozen = create_model(spec, pretrained=True)
            scores = rescore(
                model, raw, frozen, data.images, state.labelled_idx, state.labelled_y, state.pool_idx, seed, args.views
            )
            truth = data.is_anomaly[state.pool_idx].astype(np.int64)
            ids = data.ids[state.pool_idx]
            metrics = {k: {m: float(v) for m, v in compute_metrics(truth, s, ids).items()} for k, s in scores.items()}
            record = {"variant": args.variant, "case": case_name, "seed": seed, "metrics": metrics}
            record["seconds"] = time.perf_counter() - t0
            with out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            line = "  ".join(f"{k} {metrics[k]['auprc']:.3f}" for k in SCORERS if k in metrics)
            print(f"{args.variant} {case_name} seed {seed}: AUPRC {line}", flush=True)


def summary(paths: list[str]) -> None:
    from benchmarks.study import by_case_and_variant

    rows = by_case_and_variant(paths)
    for key in ("auprc", "precision_at_1pct", "auroc"):
        print(f"\n{key} (mean over seeds)\n")
        print("| case | variant | seeds | " + " | ".join(SCORERS) + " |")
        print("|---|---|---|" + "---|" * len(SCORERS))
        for (case, variant), runs in sorted(rows.items()):
            cells = [  # a scorer some runs lack (an older record, or run without --views) is left blank
                f"{np.mean([r['metrics'][s][key] for r in runs]):.3f}" if all(s in r["metrics"] for r in runs) else ""
                for s in SCORERS
            ]
            print(f"| {case} | {variant} | {len(runs)} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="balanced")
    p.add_argument("--cases", default="cifar10-airplane,gz1-edge_on")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-views", dest="views", action="store_false", help="skip the 4- and 8-view scorers")
    p.add_argument("--data-dir", default=".anomalymatch")
    p.add_argument("--out", default="benchmarks/results/study/posthoc.jsonl")
    p.add_argument("--summary", nargs="*", help="print the tables of these JSON-lines files instead of running")
    args = p.parse_args()
    if args.summary:
        summary(args.summary)
    else:
        run(args)


if __name__ == "__main__":
    main()

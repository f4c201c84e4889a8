"""An active-learning campaign: cycles of ``run_cycle`` with MLflow logging of each cycle (labels
used, pool sample, candidates, metrics, plots, model) and, where ground truth is known (benchmarks,
the demo), a simulated expert who labels the top candidates between cycles.

Campaign state and the trainer checkpoint are written after every cycle (and every
``checkpoint_every`` iterations) so a crashed campaign resumes where it stopped."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from anomalymatch.config import AppConfig
from training.cycle import CampaignState, CycleResult, oracle_picks, run_cycle
from training.trainer import FixMatchTrainer

STATE_FILE = "state.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class CampaignOutcome:
    results: list[CycleResult]
    state: CampaignState
    run_id: str | None
    workdir: Path


def candidates_csv(rows: list[tuple[str, float]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "score", "rank"])
    for rank, (image_id, score) in enumerate(rows, 1):
        writer.writerow([image_id, f"{score:.6f}", rank])
    return buf.getvalue().encode()


def save_state(state: CampaignState, ids: np.ndarray, path: Path) -> None:
    """Campaign state by image id (robust to re-ordering of the source), written atomically."""
    payload = {
        "cycle": state.cycle,
        "labelled": [[str(ids[i]), int(y)] for i, y in zip(state.labelled_idx, state.labelled_y)],
        "pool": [str(ids[i]) for i in state.pool_idx],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def load_state(path: Path, ids: np.ndarray) -> CampaignState:
    payload = json.loads(path.read_text())
    position = {str(v): i for i, v in enumerate(ids)}
    try:
        labelled = [position[i] for i, _ in payload["labelled"]]
        pool = [position[i] for i in payload["pool"]]
    except KeyError as exc:
        raise ValueError(f"campaign state {path} names image {exc} that is not in the current sources") from None
    return CampaignState(labelled, [y for _, y in payload["labelled"]], pool, cycle=int(payload["cycle"]))


def log_cycle(tracker, run_id: str, result: CycleResult, state: CampaignState, ids: np.ndarray,
              trainer: FixMatchTrainer, truth: np.ndarray | None) -> None:
    """Everything a cycle used and produced, on its MLflow run."""
    from training.model import save_weights
    from training.plots import curve_figures
    from training.tracking import sha256_bytes

    labels = state.label_table(ids)
    labels_bytes = labels.to_csv_bytes()
    pool_ids = [str(ids[i]) for i in result.pool_idx]
    pool_bytes = ("\n".join(pool_ids) + "\n").encode()
    tracker.set_tags(run_id, {
        "labels_sha256": labels.sha256(),
        "n_labels": len(labels),
        "n_anomalies": labels.n_anomalies,
        "pool_sha256": sha256_bytes(pool_bytes),
        "n_pool": len(pool_ids),
        "iteration": trainer.iteration,
    })
    tracker.log_bytes(run_id, labels_bytes, "labels/labels.csv")
    tracker.log_bytes(run_id, pool_bytes, "pool/pool_ids.txt")
    tracker.log_bytes(run_id, candidates_csv(result.candidates), "candidates/candidates.csv")
    tracker.log_bytes(run_id, candidates_csv(result.lookalikes), "candidates/labelled_nominal_lookalikes.csv")
    tracker.log_metrics(run_id, {k: v for k, v in result.summary().items() if k != "cycle"}, step=result.cycle)
    if truth is not None:
        for name, fig in curve_figures(truth[result.pool_idx], result.pool_scores, np.asarray(pool_ids)).items():
            tracker.log_figure(run_id, fig, f"plots/{name}.png")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_weights(trainer.ema.module, weights)
        (Path(tmp) / "preprocess.json").write_text(trainer.ema.module.spec.to_json())
        tracker.log_file(run_id, weights, "model")
        tracker.log_file(run_id, Path(tmp) / "preprocess.json", "model")


def run_campaign(
    trainer: FixMatchTrainer,
    images: np.ndarray,
    ids: np.ndarray,
    state: CampaignState,
    config: AppConfig,
    workdir: Path,
    truth: np.ndarray | None = None,
    tracker=None,
    name: str = "campaign",
    tags: dict[str, str] | None = None,
    progress: bool = False,
    on_cycle: Callable[[CycleResult], None] | None = None,
) -> CampaignOutcome:
    """Run ``config.cycle.cycles`` cycles from ``state``; with ``truth`` the simulated expert labels
    ``config.cycle.picks`` true anomalies and false positives from the pool after each cycle."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / CHECKPOINT_FILE
    cfg = config.cycle
    results: list[CycleResult] = []

    def cycles() -> None:
        while state.cycle < cfg.cycles:
            done_in_cycle = trainer.iteration - state.cycle * cfg.iterations
            remaining = cfg.iterations - max(done_in_cycle, 0)
            if tracker is not None:
                with tracker.cycle(state.cycle + 1) as cycle_run:
                    result = run_cycle(trainer, images, ids, state, cfg, truth, tracker, checkpoint, progress, remaining)
                    log_cycle(tracker, cycle_run, result, state, ids, trainer, truth)
            else:
                result = run_cycle(trainer, images, ids, state, cfg, truth, None, checkpoint, progress, remaining)
            results.append(result)
            if on_cycle:
                on_cycle(result)
            if truth is not None and cfg.picks and state.cycle < cfg.cycles:
                pos, y = oracle_picks(ids[state.pool_idx], result.pool_scores, truth[state.pool_idx], cfg.picks)
                state.label(state.pool_idx[pos], y)
            save_state(state, ids, workdir / STATE_FILE)

    run_id = None
    if tracker is not None:
        with tracker.campaign(name, config.to_dict(), tags) as run_id:
            cycles()
            if results:
                last = results[-1]
                tracker.log_metrics(run_id, {k: v for k, v in last.summary().items() if k != "cycle"}, step=last.cycle)
    else:
        cycles()
    return CampaignOutcome(results, state, run_id, workdir)

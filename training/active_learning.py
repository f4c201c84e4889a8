"""Active-learning cycles of ``run_cycle`` (``run_cycles``), with MLflow logging of each cycle (labels
used, pool sample, candidates, metrics, plots, model) and, where ground truth is known (benchmarks,
the demo), a simulated expert who labels the top candidates between cycles.

With ``register=True`` each cycle's model also becomes a registry version (ONNX export, parity check,
gate, aliases: ``registry.register_cycle``); a fixed, id-hashed slice of the labels
(``registry.holdout_fraction``) is then held out of training in every cycle for the gate.

The labelled/pool state and the trainer checkpoint are written after every cycle (and every
``checkpoint_every`` iterations) so a crashed run resumes where it stopped."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomalymatch.config import AppConfig
from training.cycle import CycleResult, LabelledPool, oracle_picks, run_cycle
from training.trainer import FixMatchTrainer

STATE_FILE = "state.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class CyclesOutcome:
    results: list[CycleResult]
    state: LabelledPool
    run_id: str | None
    workdir: Path
    registrations: list = field(default_factory=list)  # registry.Registration per cycle, when registering


def candidates_csv(rows: list[tuple[str, float]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "score", "rank"])
    for rank, (image_id, score) in enumerate(rows, 1):
        writer.writerow([image_id, f"{score:.6f}", rank])
    return buf.getvalue().encode()


def save_state(state: LabelledPool, ids: np.ndarray, path: Path) -> None:
    """Campaign state by image id (robust to re-ordering of the source), written atomically."""
    payload = {
        "cycle": state.cycle,
        "labelled": [[str(ids[i]), int(y)] for i, y in zip(state.labelled_idx, state.labelled_y)],
        "pool": [str(ids[i]) for i in state.pool_idx],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def load_state(path: Path, ids: np.ndarray) -> LabelledPool:
    payload = json.loads(path.read_text())
    position = {str(v): i for i, v in enumerate(ids)}
    try:
        labelled = [position[i] for i, _ in payload["labelled"]]
        pool = [position[i] for i in payload["pool"]]
    except KeyError as exc:
        raise ValueError(f"campaign state {path} names image {exc} that is not in the current sources") from None
    return LabelledPool(labelled, [y for _, y in payload["labelled"]], pool, cycle=int(payload["cycle"]))


def pool_ids_bytes(ids: np.ndarray, pool_idx: np.ndarray) -> bytes:
    return ("\n".join(str(ids[i]) for i in pool_idx) + "\n").encode()


def training_view(state: LabelledPool, ids: np.ndarray, holdout_fraction: float) -> tuple[LabelledPool, np.ndarray]:
    """The state to train on (labels minus the held-out slice) and the held-out mask over the labels."""
    from registry.holdout import select_holdout

    mask = select_holdout([str(ids[i]) for i in state.labelled_idx], state.labelled_y, holdout_fraction)
    view = LabelledPool(state.labelled_idx[~mask], state.labelled_y[~mask], state.pool_idx, cycle=state.cycle)
    return view, mask


def register_cycle_model(
    tracker,
    run_id: str,
    name: str,
    result: CycleResult,
    state: LabelledPool,
    holdout: np.ndarray,
    ids: np.ndarray,
    images: np.ndarray,
    trainer: FixMatchTrainer,
    config: AppConfig,
    parent_version: str = "",
):
    """Register the cycle's EMA model with its lineage; returns the ``registry.Registration``."""
    from registry.register import ImageSet, register_cycle
    from training.tracking import sha256_bytes

    labelled, y = state.labelled_idx, state.labelled_y
    lineage = {
        "campaign": name,
        "campaign_run_id": tracker.parent_run_id or "",
        "cycle": result.cycle,
        "pool_sha256": sha256_bytes(pool_ids_bytes(ids, result.pool_idx)),
        "n_pool": len(result.pool_idx),
        "config_hash": config.config_hash(),
        "parent_version": parent_version,
        "iteration": trainer.iteration,
        "metrics": {k: float(v) for k, v in result.metrics.items()},
    }
    return register_cycle(
        trainer.ema.module,
        run_id,
        lineage,
        pool=ImageSet(images[result.pool_idx], ids[result.pool_idx]),
        holdout=ImageSet(images[labelled[holdout]], ids[labelled[holdout]], y[holdout]),
        train=ImageSet(None, ids[labelled[~holdout]], y[~holdout]),
        tracking_uri=tracker.tracking_uri,
        name=config.tracking.registered_model,
        cfg=config.registry,
    )


def log_cycle(
    tracker,
    run_id: str,
    result: CycleResult,
    state: LabelledPool,
    ids: np.ndarray,
    trainer: FixMatchTrainer,
    truth: np.ndarray | None,
) -> None:
    """Everything a cycle used and produced, on its MLflow run."""
    from anomalymatch.plots import curve_figures
    from training.model import save_weights
    from training.tracking import sha256_bytes

    labels = state.label_table(ids)
    labels_bytes = labels.to_csv_bytes()
    pool_ids = [str(ids[i]) for i in result.pool_idx]
    pool_bytes = pool_ids_bytes(ids, result.pool_idx)
    tracker.set_tags(
        run_id,
        {
            "labels_sha256": labels.sha256(),
            "n_labels": len(labels),
            "n_anomalies": labels.n_anomalies,
            "pool_sha256": sha256_bytes(pool_bytes),
            "n_pool": len(pool_ids),
            "iteration": trainer.iteration,
        },
    )
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


def log_saliency(tracker, run_id: str, result: CycleResult, ids, images, trainer, top: int) -> None:
    """Why the top candidates score high: occlusion maps of the exported model over the images as the model
    saw them (4x enlarged), logged as ``saliency/rank01_<id>.png`` ... (``anomalymatch.saliency``)."""
    from anomalymatch.saliency import occlusion_map, overlay_png

    row_of = {str(i): k for k, i in enumerate(ids)}
    scorer = trainer.onnx_scorer()
    for rank, (image_id, _) in enumerate(result.candidates[:top], 1):
        image = images[row_of[str(image_id)]]
        _, heat = occlusion_map(scorer, image)
        big = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(image_id))[-80:]
        tracker.log_bytes(run_id, overlay_png(big, heat), f"saliency/rank{rank:02d}_{safe}.png")


@dataclass
class TrackedCycle:
    result: CycleResult
    run_id: str  # the cycle's MLflow run
    registration: Any = None  # registry.Registration, when registering


def run_tracked_cycle(
    *,
    trainer: FixMatchTrainer,
    images: np.ndarray,
    ids: np.ndarray,
    state: LabelledPool,
    config: AppConfig,
    tracker,
    name: str,
    truth: np.ndarray | None = None,
    checkpoint: Path | None = None,
    iterations: int | None = None,
    progress: bool = False,
    register: bool = False,
    parent_version: str = "",
    tags: dict[str, str] | None = None,
    artifacts: dict[str, bytes] | None = None,
) -> TrackedCycle:
    """One cycle on its own MLflow run under the tracker's parent run: train (without the held-out label
    slice when registering), log what it used and produced (plus ``artifacts``: path -> bytes), and with
    ``register`` make the EMA model a registry version (export, parity, gate) whose parent is
    ``parent_version``. ``state.cycle`` advances by one."""
    with tracker.cycle(state.cycle + 1, tags=tags) as run_id:
        train_state, holdout = (
            training_view(state, ids, config.registry.holdout_fraction) if register else (state, None)
        )
        result = run_cycle(
            trainer,
            images,
            ids,
            train_state,
            config.cycle,
            truth=truth,
            tracker=tracker,
            checkpoint_path=checkpoint,
            progress=progress,
            iterations=iterations,
        )
        state.cycle = train_state.cycle
        log_cycle(tracker, run_id, result, state, ids, trainer, truth)
        if config.tracking.saliency_top:
            log_saliency(tracker, run_id, result, ids, images, trainer, config.tracking.saliency_top)
        for path, data in (artifacts or {}).items():
            tracker.log_bytes(run_id, data, path)
        registration = None
        if register:
            registration = register_cycle_model(
                tracker, run_id, name, result, state, holdout, ids, images, trainer, config, parent_version
            )
    return TrackedCycle(result, run_id, registration)


def run_cycles(
    trainer: FixMatchTrainer,
    images: np.ndarray,
    ids: np.ndarray,
    state: LabelledPool,
    config: AppConfig,
    workdir: Path,
    truth: np.ndarray | None = None,
    tracker=None,
    name: str = "campaign",
    tags: dict[str, str] | None = None,
    progress: bool = False,
    on_cycle: Callable[[CycleResult], None] | None = None,
    register: bool = False,
) -> CyclesOutcome:
    """Run ``config.cycle.cycles`` cycles from ``state``; with ``truth`` the simulated expert labels
    ``config.cycle.picks`` true anomalies and false positives from the pool after each cycle.
    ``register`` (needs ``tracker``) trains without the held-out labels and registers every cycle."""
    if register and tracker is None:
        raise ValueError("register=True needs an MLflow tracker: versions are registered from cycle runs")
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / CHECKPOINT_FILE
    cfg = config.cycle
    results: list[CycleResult] = []
    registrations: list = []

    def cycles() -> None:
        while state.cycle < cfg.cycles:
            done_in_cycle = trainer.iteration - state.cycle * cfg.iterations
            remaining = cfg.iterations - max(done_in_cycle, 0)
            if tracker is not None:
                tracked = run_tracked_cycle(
                    trainer=trainer,
                    images=images,
                    ids=ids,
                    state=state,
                    config=config,
                    tracker=tracker,
                    name=name,
                    truth=truth,
                    checkpoint=checkpoint,
                    iterations=remaining,
                    progress=progress,
                    register=register,
                    parent_version=registrations[-1].version if registrations else "",
                )
                result = tracked.result
                if tracked.registration is not None:
                    registrations.append(tracked.registration)
            else:
                result = run_cycle(
                    trainer,
                    images,
                    ids,
                    state,
                    cfg,
                    truth=truth,
                    checkpoint_path=checkpoint,
                    progress=progress,
                    iterations=remaining,
                )
            results.append(result)
            if on_cycle:
                on_cycle(result)
            if truth is not None and cfg.picks and state.cycle < cfg.cycles:
                pos, y = oracle_picks(ids[state.pool_idx], result.pool_scores, truth[state.pool_idx], cfg.picks)
                state.label(state.pool_idx[pos], y)
            save_state(state, ids, workdir / STATE_FILE)

    run_id = None
    if tracker is not None:
        with tracker.parent_run(name, config.to_dict(), tags) as run_id:
            cycles()
            if results:
                last = results[-1]
                tracker.log_metrics(run_id, {k: v for k, v in last.summary().items() if k != "cycle"}, step=last.cycle)
    else:
        cycles()
    return CyclesOutcome(results, state, run_id, workdir, registrations)

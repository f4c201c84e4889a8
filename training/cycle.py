"""One active-learning cycle as one small function: train, score the pool with the EMA model,
compute metrics where ground truth is known, select candidates, log. Plus the bookkeeping of
which images are labelled and which are still in the pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalymatch.config import CycleConfig
from anomalymatch.labels import Label, LabelTable
from anomalymatch.metrics import compute_metrics, rank_order
from training.trainer import FixMatchTrainer, StepStats

STEP_LOG_GROUP = 50  # training steps whose statistics are read and logged together (one GPU wait each)


@dataclass
class LabelledPool:
    """Indices into one image array: the labelled set (with labels) and the unlabelled pool.

    Invariant: a labelled image is never in the pool."""

    labelled_idx: np.ndarray
    labelled_y: np.ndarray
    pool_idx: np.ndarray
    cycle: int = 0

    def __post_init__(self) -> None:
        self.labelled_idx = np.asarray(self.labelled_idx, dtype=np.int64)
        self.labelled_y = np.asarray(self.labelled_y, dtype=np.int64)
        self.pool_idx = np.asarray(self.pool_idx, dtype=np.int64)
        self.check()

    def check(self) -> None:
        if len(self.labelled_idx) != len(self.labelled_y):
            raise ValueError("labelled_idx and labelled_y differ in length")
        if len(np.unique(self.labelled_idx)) != len(self.labelled_idx):
            raise ValueError("an image is labelled twice in the labelled set")
        overlap = np.intersect1d(self.labelled_idx, self.pool_idx)
        if len(overlap):
            raise ValueError(f"{len(overlap)} labelled image(s) are also in the pool")

    def label(self, idx: np.ndarray, y: np.ndarray) -> None:
        """Move pool images ``idx`` with labels ``y`` into the labelled set."""
        idx = np.asarray(idx, dtype=np.int64)
        missing = np.setdiff1d(idx, self.pool_idx)
        if len(missing):
            raise ValueError(f"{len(missing)} image(s) to label are not in the pool")
        self.pool_idx = np.setdiff1d(self.pool_idx, idx, assume_unique=True)
        self.labelled_idx = np.concatenate([self.labelled_idx, idx])
        self.labelled_y = np.concatenate([self.labelled_y, np.asarray(y, dtype=np.int64)])
        self.check()

    def label_table(self, ids: np.ndarray) -> LabelTable:
        names = [Label.ANOMALY if v == 1 else Label.NOMINAL for v in self.labelled_y]
        return LabelTable.from_pairs(zip((str(ids[i]) for i in self.labelled_idx), names))


@dataclass
class CycleResult:
    cycle: int
    n_labelled: int
    n_pool: int
    pool_idx: np.ndarray
    pool_scores: np.ndarray
    candidates: list[tuple[str, float]]
    lookalikes: list[tuple[str, float]]
    metrics: dict[str, float]
    history: list[StepStats] = field(repr=False)
    train_seconds: float = 0.0
    seconds_per_iteration: float = 0.0
    score_seconds: float = 0.0
    score_images_per_second: float = 0.0

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"cycle": self.cycle, "n_labelled": self.n_labelled, "n_pool": self.n_pool}
        out.update({k: v for k, v in self.metrics.items() if k not in ("n", "n_anomalies")})
        out.update(
            train_seconds=self.train_seconds,
            seconds_per_iteration=self.seconds_per_iteration,
            score_seconds=self.score_seconds,
            score_images_per_second=self.score_images_per_second,
        )
        return out


def select_candidates(ids: np.ndarray, scores: np.ndarray, n: int) -> list[tuple[str, float]]:
    """The ``n`` highest-scoring images as (id, score), ties broken by id hash (``metrics.rank_order``)."""
    order = rank_order(scores, ids)[:n]
    return [(str(ids[i]), float(scores[i])) for i in order]


def oracle_picks(ids: np.ndarray, scores: np.ndarray, truth: np.ndarray, picks: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated expert: the ``picks`` highest-scoring true anomalies and the ``picks`` highest-scoring
    nominal images (false positives). Returns positions into ``ids``/``scores`` and their labels."""
    order = rank_order(scores, ids)
    anomalies = order[truth[order] == 1][:picks]
    nominals = order[truth[order] == 0][:picks]
    chosen = np.concatenate([anomalies, nominals])
    return chosen, truth[chosen].astype(np.int64)


def run_cycle(
    trainer: FixMatchTrainer,
    images: np.ndarray,
    ids: np.ndarray,
    state: LabelledPool,
    cfg: CycleConfig,
    *,
    truth: np.ndarray | None = None,
    tracker=None,
    checkpoint_path: str | Path | None = None,
    progress: bool = False,
    iterations: int | None = None,
) -> CycleResult:
    """Train ``cfg.iterations`` FixMatch steps on the labelled set + pool, score the pool with the EMA
    model, compute metrics (when ``truth`` for the pool is known), select candidates, log steps to
    ``tracker``. ``iterations`` overrides ``cfg.iterations`` (the remainder of a resumed cycle)."""
    iterations = cfg.iterations if iterations is None else iterations
    state.cycle += 1
    labelled = images[state.labelled_idx]
    pool = images[state.pool_idx]

    unlogged: list[StepStats] = []  # read in groups: reading a step's statistics waits for the GPU

    def log_steps() -> None:
        for s in unlogged:
            tracker.log_step(
                s.iteration,
                {
                    "loss": s.loss,
                    "loss_supervised": s.supervised,
                    "loss_unsupervised": s.unsupervised,
                    "mask_rate": s.mask_rate,
                    "pseudo_anomaly_rate": s.pseudo_anomaly_rate,
                },
            )
        unlogged.clear()

    def on_step(s: StepStats) -> None:
        if tracker is not None:
            unlogged.append(s)
            if len(unlogged) >= STEP_LOG_GROUP:
                log_steps()

    t0 = time.perf_counter()
    try:
        history = trainer.train(
            labelled,
            state.labelled_y,
            pool,
            iterations,
            on_step=on_step,
            checkpoint_path=checkpoint_path,
            checkpoint_every=cfg.checkpoint_every,
            progress=progress,
        )
    finally:  # the steps taken before an interruption are logged too
        if tracker is not None:
            log_steps()
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = trainer.score(pool, cfg.score_batch_size, progress=progress)
    score_seconds = time.perf_counter() - t0

    pool_ids = ids[state.pool_idx]
    metrics: dict[str, float] = {}
    if truth is not None:
        metrics = compute_metrics(truth[state.pool_idx], scores, pool_ids)
    candidates = select_candidates(pool_ids, scores, cfg.top_candidates)
    nominal_idx = state.labelled_idx[state.labelled_y == 0]
    lookalikes: list[tuple[str, float]] = []
    if len(nominal_idx):
        nominal_scores = trainer.score(images[nominal_idx], cfg.score_batch_size)
        lookalikes = select_candidates(ids[nominal_idx], nominal_scores, min(cfg.top_candidates, len(nominal_idx)))

    return CycleResult(
        cycle=state.cycle,
        n_labelled=len(state.labelled_idx),
        n_pool=len(state.pool_idx),
        pool_idx=state.pool_idx.copy(),
        pool_scores=scores,
        candidates=candidates,
        lookalikes=lookalikes,
        metrics=metrics,
        history=history,
        train_seconds=train_seconds,
        seconds_per_iteration=train_seconds / max(iterations, 1),
        score_seconds=score_seconds,
        score_images_per_second=len(pool) / max(score_seconds, 1e-9),
    )

"""The promotion gate: challenger vs champion on labelled images that neither was trained on.

A challenger worse than the champion beyond a tolerance on the point estimates is blocked, unless
``confidence`` > 0 and it is worse beyond the tolerance in fewer than that share of paired,
class-stratified bootstrap resamples of the evaluation images: held-out sets are small while labels
are few (20 images with 5 anomalies: one swapped pair moves AUPRC by 0.08), and a gate that reads
such noise as a regression would keep the first champion forever.

Pure numpy: the caller scores both models on the same evaluation images and passes the scores."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np

from anomalymatch.metrics import average_precision, rank_order


class GateDecision(str, Enum):
    PASSED = "passed"  # not worse than the champion beyond the tolerances
    FAILED = "failed"  # worse beyond a tolerance: keep the champion
    NO_CHAMPION = "no_champion"  # nothing to compare with: the first passing version may be promoted
    INCONCLUSIVE = "inconclusive"  # too few held-out anomalies or incomparable models: keep the champion


@dataclass(frozen=True)
class GateResult:
    decision: GateDecision
    reason: str
    champion_version: str = ""
    n_images: int = 0
    n_anomalies: int = 0
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)
    worse_share: float | None = None  # share of bootstrap resamples where the challenger was worse

    @property
    def passed(self) -> bool:
        return self.decision in (GateDecision.PASSED, GateDecision.NO_CHAMPION)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decision"] = self.decision.value
        return d


def holdout_metrics(
    y: Sequence[int] | np.ndarray, scores: np.ndarray, ids: Sequence[str] | np.ndarray
) -> dict[str, float]:
    """AUPRC and precision at the top (R-precision: the share of anomalies among the top k images,
    k = the number of anomalies), the two numbers the gate compares."""
    y = np.asarray(y, dtype=np.int64)
    k = int(y.sum())
    if k == 0 or k == len(y):
        return {"auprc": math.nan, "precision_at_top": math.nan, "k": k}
    order = rank_order(scores, np.asarray(ids, dtype=object))
    return {"auprc": float(average_precision(y, scores)), "precision_at_top": float(y[order[:k]].mean()), "k": k}


def _is_worse(ch: dict, cp: dict, auprc_tolerance: float, precision_tolerance: float) -> list[str]:
    worse = []
    if ch["auprc"] < cp["auprc"] - auprc_tolerance:
        worse.append(f"AUPRC {ch['auprc']:.3f} < champion {cp['auprc']:.3f} - {auprc_tolerance}")
    if ch["precision_at_top"] < cp["precision_at_top"] - precision_tolerance:
        worse.append(
            f"precision@top {ch['precision_at_top']:.3f} < champion {cp['precision_at_top']:.3f} "
            f"- {precision_tolerance}"
        )
    return worse


def worse_share(
    y: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray,
    ids: np.ndarray,
    auprc_tolerance: float,
    precision_tolerance: float,
    resamples: int = 1000,
) -> float:
    """The share of paired bootstrap resamples (anomalies and nominal images resampled separately, both
    models on the same draw) in which the challenger is worse than the champion beyond a tolerance.
    Seeded by the evaluation ids, so the same evaluation gives the same answer."""
    y, ids = np.asarray(y, dtype=np.int64), np.asarray(ids, dtype=object)
    seed = int.from_bytes(hashlib.sha256("\n".join(map(str, ids)).encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    worse = 0
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        ch = holdout_metrics(y[idx], challenger_scores[idx], ids[idx])
        cp = holdout_metrics(y[idx], champion_scores[idx], ids[idx])
        worse += bool(_is_worse(ch, cp, auprc_tolerance, precision_tolerance))
    return worse / resamples


def evaluate_gate(
    y: Sequence[int] | np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    ids: Sequence[str] | np.ndarray,
    auprc_tolerance: float = 0.02,
    precision_tolerance: float = 0.05,
    min_anomalies: int = 1,
    champion_version: str = "",
    confidence: float = 0.0,
    resamples: int = 1000,
) -> GateResult:
    """Pass iff the challenger's AUPRC >= champion's - ``auprc_tolerance`` and its precision at the top
    >= champion's - ``precision_tolerance``, on images labelled but trained on by neither model; with
    ``confidence`` > 0 a challenger worse on those numbers still passes when it is worse in fewer than
    ``confidence`` of ``resamples`` bootstrap resamples (no evidence of a regression).

    ``champion_scores`` None means there is no champion (NO_CHAMPION, which passes). Fewer than
    ``min_anomalies`` anomalies (or no nominal image) in the evaluation set is INCONCLUSIVE, which
    does not pass: without evidence the champion stays."""
    y = np.asarray(y, dtype=np.int64)
    n, n_pos = len(y), int(y.sum())
    ch = holdout_metrics(y, challenger_scores, ids) if n_pos and n_pos < n else {}
    if champion_scores is None:
        return GateResult(GateDecision.NO_CHAMPION, "no champion yet", "", n, n_pos, ch)
    if n_pos < min_anomalies or n_pos == n:
        return GateResult(
            GateDecision.INCONCLUSIVE,
            f"{n_pos} held-out anomalies and {n - n_pos} nominal images that neither model trained on "
            f"(need >= {min_anomalies} and >= 1): label more, or promote with --force --reason",
            champion_version,
            n,
            n_pos,
            ch,
        )
    cp = holdout_metrics(y, champion_scores, ids)
    worse = _is_worse(ch, cp, auprc_tolerance, precision_tolerance)
    summary = (
        f"AUPRC {ch['auprc']:.3f} vs {cp['auprc']:.3f}, precision@top {ch['precision_at_top']:.3f} vs "
        f"{cp['precision_at_top']:.3f} on {n} images ({n_pos} anomalies)"
    )
    if not worse:
        return GateResult(GateDecision.PASSED, summary, champion_version, n, n_pos, ch, cp)
    if confidence > 0:
        share = worse_share(
            y,
            np.asarray(challenger_scores),
            np.asarray(champion_scores),
            np.asarray(ids, dtype=object),
            auprc_tolerance,
            precision_tolerance,
            resamples,
        )
        if share < confidence:
            return GateResult(
                GateDecision.PASSED,
                f"{summary}: worse ({'; '.join(worse)}), but only in {share:.0%} of "
                f"{resamples} bootstrap resamples (< {confidence:.0%}): no evidence of a regression",
                champion_version,
                n,
                n_pos,
                ch,
                cp,
                share,
            )
        return GateResult(
            GateDecision.FAILED,
            f"worse than champion: {'; '.join(worse)} (in {share:.0%} of {resamples} bootstrap resamples)",
            champion_version,
            n,
            n_pos,
            ch,
            cp,
            share,
        )
    return GateResult(
        GateDecision.FAILED, "worse than champion: " + "; ".join(worse), champion_version, n, n_pos, ch, cp
    )

"""The promotion gate: challenger vs champion on labelled images that neither was trained on.

Pure numpy: the caller scores both models on the same evaluation images and passes the scores."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Sequence

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

    @property
    def passed(self) -> bool:
        return self.decision in (GateDecision.PASSED, GateDecision.NO_CHAMPION)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decision"] = self.decision.value
        return d


def holdout_metrics(y: Sequence[int] | np.ndarray, scores: np.ndarray,
                    ids: Sequence[str] | np.ndarray) -> dict[str, float]:
    """AUPRC and precision at the top (R-precision: the share of anomalies among the top k images,
    k = the number of anomalies), the two numbers the gate compares."""
    y = np.asarray(y, dtype=np.int64)
    k = int(y.sum())
    if k == 0 or k == len(y):
        return {"auprc": math.nan, "precision_at_top": math.nan, "k": k}
    order = rank_order(scores, np.asarray(ids, dtype=object))
    return {"auprc": float(average_precision(y, scores)), "precision_at_top": float(y[order[:k]].mean()), "k": k}


def evaluate_gate(
    y: Sequence[int] | np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    ids: Sequence[str] | np.ndarray,
    auprc_tolerance: float = 0.02,
    precision_tolerance: float = 0.05,
    min_anomalies: int = 1,
    champion_version: str = "",
) -> GateResult:
    """Pass iff the challenger's AUPRC >= champion's - ``auprc_tolerance`` and its precision at the top
    >= champion's - ``precision_tolerance``, on images labelled but trained on by neither model.

    ``champion_scores`` None means there is no champion (NO_CHAMPION, which passes). Fewer than
    ``min_anomalies`` anomalies (or no nominal image) in the evaluation set is INCONCLUSIVE, which
    does not pass: without evidence the champion stays."""
    y = np.asarray(y, dtype=np.int64)
    n, n_pos = len(y), int(y.sum())
    ch = holdout_metrics(y, challenger_scores, ids) if n_pos and n_pos < n else {}
    if champion_scores is None:
        return GateResult(GateDecision.NO_CHAMPION, "no champion yet", "", n, n_pos, ch)
    if n_pos < min_anomalies or n_pos == n:
        return GateResult(GateDecision.INCONCLUSIVE,
                          f"{n_pos} held-out anomalies and {n - n_pos} nominal images that neither model trained on "
                          f"(need >= {min_anomalies} and >= 1): label more, or promote with --force --reason",
                          champion_version, n, n_pos, ch)
    cp = holdout_metrics(y, champion_scores, ids)
    worse = []
    if ch["auprc"] < cp["auprc"] - auprc_tolerance:
        worse.append(f"AUPRC {ch['auprc']:.3f} < champion {cp['auprc']:.3f} - {auprc_tolerance}")
    if ch["precision_at_top"] < cp["precision_at_top"] - precision_tolerance:
        worse.append(f"precision@top {ch['precision_at_top']:.3f} < champion {cp['precision_at_top']:.3f} "
                     f"- {precision_tolerance}")
    summary = (f"AUPRC {ch['auprc']:.3f} vs {cp['auprc']:.3f}, precision@top {ch['precision_at_top']:.3f} vs "
               f"{cp['precision_at_top']:.3f} on {n} images ({n_pos} anomalies)")
    if worse:
        return GateResult(GateDecision.FAILED, "worse than champion: " + "; ".join(worse), champion_version,
                          n, n_pos, ch, cp)
    return GateResult(GateDecision.PASSED, summary, champion_version, n, n_pos, ch, cp)

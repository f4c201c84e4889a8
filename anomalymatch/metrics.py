"""Ranking metrics for an anomaly search: AUROC, AUPRC and what the expert sees in the top slice.

Every function ranks images by descending score. Ties in score are broken by a hash of the image id (then
the id itself), never by label and never by the id's spelling: ids often carry a class or survey name
(``airplane_00042``), and alphabetical order would put one class first inside a tie and flatter (or punish)
a model that gives many images the same score. The order is still fixed: the same ids and scores rank
the same way on every machine, whatever the input order.
AUROC and average precision do not depend on the order inside a tie (they treat a tie as one threshold,
exactly like scikit-learn), so they take no ids.

Conventions
- Labels are 0/1 (1 = anomaly); booleans are accepted. Anything else raises ``ValueError``.
- Scores are any real numbers (float32 or float64); a NaN score raises ``ValueError``.
- A metric that is undefined for the data is NaN rather than an error: AUROC and AUPRC of a single-class
  pool, recall of a pool without anomalies. The curves, meant for plotting, raise instead.
- ``top_k(n, fraction) = max(1, floor(n * fraction + 1e-9))``: the top slice holds at least one image;
  the 1e-9 absorbs floating-point error such as ``100 * 0.29 = 28.999999999999996``.

``compute_metrics`` sorts once and derives every number from that one ordering, so it stays fast for
tens of millions of scores.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The top-slice fractions reported after every cycle, by the suffix used in metric names.
TOP_FRACTIONS: dict[str, float] = {"0.1pct": 0.001, "1pct": 0.01}

#: The metric names that ``compute_metrics`` returns besides "n" and "n_anomalies".
METRIC_NAMES: tuple[str, ...] = (
    "auroc",
    "auprc",
    "recall_at_0.1pct",
    "precision_at_0.1pct",
    "recall_at_1pct",
    "precision_at_1pct",
)


def _as_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Scores as a 1-D float array (float32 kept), rejecting NaN."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}; pass one score per image")
    if s.dtype.kind != "f":
        if s.dtype.kind not in "biu":
            raise ValueError(f"scores must be numbers, got dtype {s.dtype}")
        s = s.astype(np.float64)
    n_nan = int(np.count_nonzero(np.isnan(s)))
    if n_nan:
        raise ValueError(
            f"{n_nan} of {s.size} scores are NaN; fix the model output (or drop those images) before ranking"
        )
    return s


def _as_labels(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Labels as a 1-D int8 array of 0/1 with length ``n``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size != n:
        raise ValueError(f"labels must be 1-D with one entry per score ({n}), got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0/1 numbers (1 = anomaly), got dtype {y.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        values = np.unique(y[bad])[:5].tolist()
        raise ValueError(
            f"labels must be 0 (nominal) or 1 (anomaly); found {int(bad.sum())} other values such as {values}"
        )
    return y.astype(np.int8)


def _as_ids(ids: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    """Ids as a 1-D numpy string array with length ``n`` (non-strings are converted with ``str``)."""
    a = np.asarray(ids)
    if a.ndim != 1 or a.size != n:
        raise ValueError(f"ids must be 1-D with one entry per score ({n}), got shape {a.shape}")
    if a.dtype.kind != "U":
        a = a.astype(str)
    return a


def tie_keys(ids: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per id (BLAKE2b of its UTF-8 text): the order inside a tie."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )


def _descending_order(s: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """Indices by descending score; tied scores ordered by id hash, then id, when ids are given (else by
    position)."""
    order = np.argsort(-s, kind="stable")
    if ids is None or s.size < 2:
        return order
    s_sorted = s[order]
    tied_next = s_sorted[1:] == s_sorted[:-1]
    if not tied_next.any():
        return order
    in_tie = np.zeros(s.size, dtype=bool)
    in_tie[1:] |= tied_next
    in_tie[:-1] |= tied_next
    group = np.concatenate(([0], np.cumsum(~tied_next)))
    pos = np.flatnonzero(in_tie)  # tie groups are contiguous runs of sorted positions
    members = order[pos]
    within = np.lexsort((ids[members], tie_keys(ids[members]), group[pos]))
    order[pos] = members[within]
    return order


def rank_order(scores: Sequence[float] | np.ndarray, ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Indices sorting images by descending score, ties broken by id hash (see the module notes)."""
    s = _as_scores(scores)
    return _descending_order(s, _as_ids(ids, s.size))


def top_k(n: int, fraction: float) -> int:
    """Size of the top slice: ``max(1, floor(n * fraction + 1e-9))``, never more than ``n``."""
    if n < 1:
        raise ValueError(f"top_k needs at least one image, got n={n}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}; 1% is 0.01")
    return min(n, max(1, math.floor(n * fraction + 1e-9)))


@dataclass(frozen=True)
class _Ranking:
    """One sorted view of a pool: labels and scores by descending score, cumulative anomaly counts."""

    y: np.ndarray  # int8 labels in ranked order
    s: np.ndarray  # scores in ranked order
    tp: np.ndarray  # tp[i] = anomalies among the top i + 1

    @property
    def n(self) -> int:
        return int(self.y.size)

    @property
    def n_pos(self) -> int:
        return int(self.tp[-1]) if self.n else 0

    def thresholds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true positives, false positives, threshold) at each distinct score, highest first."""
        ends = np.concatenate((np.flatnonzero(self.s[1:] != self.s[:-1]), [self.n - 1]))
        tps = self.tp[ends]
        return tps, ends + 1 - tps, self.s[ends]


def _rank(labels, scores, ids=None) -> _Ranking:
    """Validate inputs and sort once."""
    s = _as_scores(scores)
    if s.size == 0:
        raise ValueError("no scores given; metrics need at least one image")
    y = _as_labels(labels, s.size)
    order = _descending_order(s, None if ids is None else _as_ids(ids, s.size))
    y_sorted = y[order]
    return _Ranking(y=y_sorted, s=s[order], tp=np.cumsum(y_sorted, dtype=np.int64))


def _recall_at(r: _Ranking, fraction: float) -> float:
    if r.n_pos == 0:
        return math.nan
    return int(r.tp[top_k(r.n, fraction) - 1]) / r.n_pos


def _precision_at(r: _Ranking, fraction: float) -> float:
    k = top_k(r.n, fraction)
    return int(r.tp[k - 1]) / k


def _auroc(r: _Ranking) -> float:
    n_pos = r.n_pos
    n_neg = r.n - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    tps, fps, _ = r.thresholds()
    tp_prev = np.concatenate(([0], tps[:-1]))
    d_fp = np.diff(fps, prepend=0)
    twice_area = int(np.sum(d_fp * (tps + tp_prev)))  # trapezoids in integer counts: exact
    return twice_area / (2.0 * n_pos * n_neg)


def _average_precision(r: _Ranking) -> float:
    n_pos = r.n_pos
    if n_pos == 0 or n_pos == r.n:
        return math.nan
    tps, fps, _ = r.thresholds()
    d_tp = np.diff(tps, prepend=0)
    return float(np.sum(d_tp * (tps / (tps + fps)))) / n_pos


def recall_at(labels, scores, ids, fraction: float) -> float:
    """Share of all anomalies found in the top ``top_k(n, fraction)`` images (NaN without anomalies)."""
    return _recall_at(_rank(labels, scores, ids), fraction)


def precision_at(labels, scores, ids, fraction: float) -> float:
    """Share of anomalies among the top ``top_k(n, fraction)`` images."""
    return _precision_at(_rank(labels, scores, ids), fraction)


def auroc(labels, scores) -> float:
    """Area under the ROC curve, equal to scikit-learn's ``roc_auc_score``; NaN for a single class."""
    return _auroc(_rank(labels, scores))


def average_precision(labels, scores) -> float:
    """AUPRC as average precision, equal to ``average_precision_score``; NaN for a single class."""
    return _average_precision(_rank(labels, scores))


def efficiency_curve(labels, scores, ids) -> tuple[np.ndarray, np.ndarray]:
    """The paper's efficiency curve: after inspecting the top i images (i = 0..n), the share of all
    anomalies found. Returns ``(fraction_inspected, fraction_found)``, both starting at 0 and ending at 1."""
    r = _rank(labels, scores, ids)
    if r.n_pos == 0:
        raise ValueError("the efficiency curve needs at least one anomaly (label 1) in the pool")
    inspected = np.arange(r.n + 1, dtype=np.float64) / r.n
    found = np.concatenate(([0], r.tp)) / r.n_pos
    return inspected, found


def roc_curve_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at each distinct score, highest first, preceded by (0, 0, +inf)."""
    r = _rank(labels, scores)
    n_pos, n_neg = r.n_pos, r.n - r.n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both anomalies (1) and nominal images (0) among the labels")
    tps, fps, thr = r.thresholds()
    fpr = np.concatenate(([0.0], fps / n_neg))
    tpr = np.concatenate(([0.0], tps / n_pos))
    return fpr, tpr, np.concatenate(([np.inf], thr.astype(np.float64)))


def pr_curve_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recall, precision, thresholds)`` at each distinct score, highest first (recall ascending)."""
    r = _rank(labels, scores)
    if r.n_pos == 0:
        raise ValueError("a precision-recall curve needs at least one anomaly (label 1) among the labels")
    tps, fps, thr = r.thresholds()
    return tps / r.n_pos, tps / (tps + fps), thr.astype(np.float64)


def compute_metrics(labels, scores, ids) -> dict[str, float]:
    """Every per-cycle metric from one sort of the pool.

    Keys: "auroc", "auprc", "recall_at_0.1pct", "precision_at_0.1pct", "recall_at_1pct",
    "precision_at_1pct", plus "n" (pool size) and "n_anomalies" (both ints). AUROC and AUPRC are NaN when
    the pool holds a single class; recall is NaN when it holds no anomaly (precision is then 0).
    """
    r = _rank(labels, scores, ids)
    out: dict[str, float] = {"auroc": _auroc(r), "auprc": _average_precision(r)}
    for suffix, fraction in TOP_FRACTIONS.items():
        out[f"recall_at_{suffix}"] = _recall_at(r, fraction)
        out[f"precision_at_{suffix}"] = _precision_at(r, fraction)
    out["n"] = r.n
    out["n_anomalies"] = r.n_pos
    return out

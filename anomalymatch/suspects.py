"""Suspect labels: labelled images whose label the model's own features argue against.

For a model version with stored embeddings (``anomalymatch.embeddings``), a logistic regression on the
labelled images' unit feature vectors (C = 10, classes unweighted, so its probabilities keep the labelled
class balance) is fitted ``folds`` times, each time without one fold,
and predicts the images of that fold (out-of-fold: no image judges its own label). An image is suspect
when that prediction gives its label a probability below ``1 - threshold``: an "anomaly" the others place
among the nominal images with confidence ``threshold``, or the reverse. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomalymatch.embeddings import EmbeddingSet
from anomalymatch.labels import Label, LabelTable

DEFAULT_THRESHOLD = 0.8


@dataclass(frozen=True)
class Suspect:
    image_id: str
    label: str
    user: str
    p_anomaly: float  # the out-of-fold probability of "anomaly"
    doubt: float  # the probability of the other class: how strongly the label is contradicted


def out_of_fold_probability(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """P(anomaly) of every row from a linear probe trained on the other folds (stratified)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=2)
    folds = int(min(folds, counts.min()))
    if folds < 2:
        raise ValueError(f"out-of-fold predictions need at least 2 labelled images of each class, got {counts}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = LogisticRegression(C=10.0, max_iter=3000)
        model.fit(x[train], y[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return out


def find_suspects(
    embeddings: EmbeddingSet, labels: LabelTable, threshold: float = DEFAULT_THRESHOLD, folds: int = 5
) -> tuple[list[Suspect], int]:
    """(suspects most doubted first, how many labelled images had vectors and were judged)."""
    if not 0.5 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0.5, 1), got {threshold}")
    position = {str(i): k for k, i in enumerate(embeddings.ids)}
    rows = [k for k, image_id in enumerate(labels.ids) if image_id in position]
    if not rows:
        return [], 0
    y = np.array([labels.labels[k] is Label.ANOMALY for k in rows], dtype=np.int64)
    x = embeddings.vectors[[position[labels.ids[k]] for k in rows]].astype(np.float32)
    p = out_of_fold_probability(x, y, folds)
    users = labels.extra.get("user", ("",) * len(labels.ids))
    doubt = np.where(y == 1, 1.0 - p, p)
    found = [
        Suspect(labels.ids[k], labels.labels[k].value, users[k], float(p[j]), float(doubt[j]))
        for j, k in enumerate(rows)
        if doubt[j] > threshold
    ]
    return sorted(found, key=lambda s: (-s.doubt, s.image_id)), len(rows)

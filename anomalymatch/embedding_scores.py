"""Rankings from embeddings alone (no training of the network): the frozen-feature baselines that show
what a trained model adds, and the linear-probe solution that can start a classifier head.

All functions are numpy/scikit-learn, torch-free. Embeddings are (N, D) float arrays, one row per image;
labels are 0/1 (1 = anomaly). Higher score = more anomalous.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray) -> np.ndarray:
    train_y = np.asarray(train_y).astype(np.int64)
    if train_x.ndim != 2 or x.ndim != 2 or train_x.shape[1] != x.shape[1]:
        raise ValueError(f"embeddings must be (N, D) with one D; got {train_x.shape} and {x.shape}")
    if len(train_x) != len(train_y):
        raise ValueError(f"{len(train_x)} labelled embeddings but {len(train_y)} labels")
    if set(np.unique(train_y).tolist()) != {0, 1}:
        raise ValueError("need labelled examples of both classes (1 = anomaly, 0 = nominal)")
    return train_y


def fit_linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, c: float = 1.0, seed: int = 0, normalise: bool = True
) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression on embeddings; returns ``(coef (D,), intercept)`` such that
    ``sigmoid(features @ coef + intercept)`` is the anomaly probability. With ``normalise`` it is fitted
    on L2-normalised rows and the returned solution applies to normalised rows."""
    from sklearn.linear_model import LogisticRegression

    train_y = _check(train_x, train_y, train_x)
    features = l2_normalise(train_x) if normalise else np.asarray(train_x, dtype=np.float32)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit(features, train_y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def linear_probe_scores(
    train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``linprobe``: class-balanced logistic regression on L2-normalised embeddings, its logit for ``x``."""
    coef, intercept = fit_linear_probe(train_x, train_y, c=c, seed=seed)
    return l2_normalise(x) @ coef + intercept


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, k: int = 3, batch: int = 4096) -> np.ndarray:
    """``knn``: mean cosine similarity to the ``k`` nearest labelled anomalies minus the mean to the ``k``
    nearest labelled nominal images (fewer when a class has fewer than ``k``)."""
    train_y = _check(train_x, train_y, x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    anomalies = l2_normalise(train_x[train_y == 1])
    nominal = l2_normalise(train_x[train_y == 0])
    queries = l2_normalise(x)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), batch):
        q = queries[start : start + batch]
        out[start : start + batch] = _mean_top_k(q @ anomalies.T, k) - _mean_top_k(q @ nominal.T, k)
    return out


def _mean_top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    k = min(k, similarity.shape[1])
    top = np.partition(similarity, similarity.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1)


def outlier_scores(x: np.ndarray, reference: np.ndarray, k: int = 10, batch: int = 4096) -> np.ndarray:
    """Cold-start outlierness: one minus the mean cosine similarity of each row of ``x`` to its ``k``
    nearest rows of ``reference`` (a sample of the same archive). A row identical to a reference row
    (cosine > 1 - 1e-5: the image itself, when it is in the sample) is not its own neighbour. Needs no
    labels; on the four benchmark cases it ranks better than an isolation forest or a Mahalanobis distance
    on the same features (README, cold start)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    reference = l2_normalise(reference)
    queries = l2_normalise(x)
    if reference.ndim != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"embeddings must be (N, D) with one D; got {queries.shape} and {reference.shape}")
    if len(reference) <= k:
        raise ValueError(f"the reference sample has {len(reference)} rows; outlierness needs more than k={k}")
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), batch):
        sim = queries[start : start + batch] @ reference.T
        sim[sim > SELF_MATCH] = -1.0
        out[start : start + batch] = 1.0 - _mean_top_k(sim, k)
    return out


def example_similarity(x: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """The best cosine similarity of each row of ``x`` to one of the ``examples`` (images the user showed as
    "this is what I look for")."""
    if len(examples) == 0:
        raise ValueError("no example embeddings")
    return (l2_normalise(x) @ l2_normalise(examples).T).max(axis=1)


#: cosine similarity above which two feature vectors count as the same image
SELF_MATCH = 1.0 - 1e-5

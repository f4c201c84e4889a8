"""The gate's held-out slice: a fixed share of the labelled images, chosen by a hash of the image id.

Because membership depends only on the id (not on the order, the cycle or the other labels), an image
that is held out stays held out in every cycle and every campaign with the same fraction, and labels
that arrive later fall into the slice at the same rate. No torch or mlflow here."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SALT = b"anomalymatch-holdout-v1:"


def holdout_position(image_id: str) -> float:
    """Where ``image_id`` falls in [0, 1): the first 8 bytes of SHA-256(salt + id) as a fraction."""
    digest = hashlib.sha256(SALT + str(image_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def select_holdout(ids: Sequence[str] | np.ndarray, y: Sequence[int] | np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask over labelled images: True = held out (never trained on), False = trained on.

    An image is held out when ``holdout_position(id) < fraction``. If that would leave the training set
    without one of the two classes (a handful of anomalies can all hash into the slice), that class is
    not held out at all: training needs both classes, and the gate then reports too few anomalies."""
    y = np.asarray(y, dtype=np.int64)
    if len(ids) != len(y):
        raise ValueError(f"select_holdout got {len(ids)} ids and {len(y)} labels")
    if fraction <= 0 or len(y) == 0:
        return np.zeros(len(y), dtype=bool)
    mask = np.fromiter((holdout_position(i) < fraction for i in ids), dtype=bool, count=len(y))
    for cls in (0, 1):
        of_class = y == cls
        if of_class.any() and mask[of_class].all():
            mask[of_class] = False
    return mask

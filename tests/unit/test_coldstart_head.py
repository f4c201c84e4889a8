"""The cold-start head's score is the numpy outlierness / example similarity, computed inside the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalymatch.embedding_scores import example_similarity, outlier_scores
from training.coldstart import build_head, calibrate, head_scores


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """400 vectors around 4 centres and 8 far from all of them (the outliers, last)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 32))
    inliers = centres[rng.integers(0, 4, 400)] + 0.3 * rng.normal(size=(400, 32))
    outliers = rng.normal(size=(8, 32)) * 2.0
    x = np.concatenate([inliers, outliers]).astype(np.float32)
    return x, np.r_[np.zeros(400), np.ones(8)]


def test_outlierness_finds_the_points_far_from_every_cluster() -> None:
    x, y = _clusters()
    s = outlier_scores(x, x, k=5)
    assert set(np.argsort(-s)[:8]) == set(np.flatnonzero(y))


def test_an_image_is_not_its_own_neighbour() -> None:
    x, _ = _clusters()
    in_reference = outlier_scores(x[:10], x, k=3)
    not_in_reference = outlier_scores(x[:10], x[10:], k=3)
    assert np.allclose(in_reference, not_in_reference, atol=1e-6)


@pytest.mark.parametrize("with_examples", [False, True])
def test_the_head_scores_as_the_numpy_functions_rank(with_examples: bool) -> None:
    x, y = _clusters(1)
    examples = x[-3:] if with_examples else None
    head = build_head(x, examples, k=5, reference=200, seed=0)
    p = head_scores(head, x)
    raw = example_similarity(x, examples) if with_examples else outlier_scores(x, head.bank.numpy(), 5)
    assert np.allclose(head.raw(torch.from_numpy(x)).numpy(), raw, atol=1e-5)
    assert set(np.argsort(-p)[:20]) == set(np.argsort(-raw)[:20])  # the same top (the examples tie at ~1)
    assert 0.0 < p.min() and p.max() < 1.0


def test_calibration_puts_the_top_percent_at_one_half_and_the_median_at_a_tenth() -> None:
    raw = np.random.default_rng(0).gamma(2.0, size=5000)
    centre, scale = calibrate(raw)
    prob = 1 / (1 + np.exp(-scale * (raw - centre)))
    assert abs(np.quantile(prob, 0.99) - 0.5) < 0.01 and abs(np.median(prob) - 0.1) < 0.01


def test_too_few_images_for_the_neighbour_count_is_refused() -> None:
    with pytest.raises(ValueError, match="more than k=10"):
        build_head(np.ones((5, 8), np.float32), k=10)

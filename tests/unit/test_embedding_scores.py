"""Frozen-embedding rankings: the linear probe and nearest-neighbour baselines, on synthetic embeddings
and, through the benchmark protocol, on real GZ1 galaxies."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from anomalymatch.embedding_scores import fit_linear_probe, knn_scores, l2_normalise, linear_probe_scores
from anomalymatch.metrics import compute_metrics

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _clusters(seed=0, n=400, d=32):
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=d)
    y = (rng.random(n) < 0.1).astype(np.int64)
    x = rng.normal(size=(n, d)) + np.outer(y, centre) * 1.5
    return x.astype(np.float32), y


def test_linear_probe_ranks_a_separable_class_first():
    x, y = _clusters()
    train = np.arange(0, 200)
    scores = linear_probe_scores(x[train], y[train], x[200:])
    assert compute_metrics(y[200:], scores, np.arange(200).astype(str))["auroc"] > 0.95
    coef, intercept = fit_linear_probe(x[train], y[train])
    np.testing.assert_allclose(scores, l2_normalise(x[200:]) @ coef + intercept, rtol=1e-5)


def test_knn_score_is_mean_similarity_to_anomalies_minus_nominal():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], dtype=np.float32)
    y = np.array([1, 1, 0, 0, 0])
    query = np.array([[1, 0]], dtype=np.float32)
    unit = l2_normalise(train)
    expected = unit[:2, 0].mean() - np.sort(unit[2:, 0])[-2:].mean()  # k=2: both anomalies, the 2 nearest nominal
    assert knn_scores(train, y, query, k=2)[0] == pytest.approx(expected, abs=1e-6)
    x, yy = _clusters(1)
    scores = knn_scores(x[:200], yy[:200], x[200:], k=3)
    assert compute_metrics(yy[200:], scores, np.arange(200).astype(str))["auroc"] > 0.9


def test_scores_need_both_classes_and_matching_dimensions():
    x, y = _clusters()
    with pytest.raises(ValueError, match="both classes"):
        linear_probe_scores(x[:50], np.zeros(50), x)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn_scores(x, y, x[:, :5])


@pytest.mark.skipif(not (DATA / "gz1" / "images.zip").exists(), reason="shared GZ1 data not found")
def test_frozen_baselines_run_the_protocol_on_real_galaxies(tmp_path):
    """linprobe and knn follow the oracle rounds (the labelled set grows by 2 x picks per cycle) and find
    edge-on galaxies far above their base rate from 10 + 30 labels and the frozen ImageNet features."""
    from anomalymatch.config import load_config
    from training.benchmark import CASES, load_case, run_method

    case = dataclasses.replace(CASES["gz1-edge_on"], pool_size=1500, anomaly_fraction=0.15)
    data = load_case(case, 32, DATA)
    config = load_config(
        None,
        {"cycle.cycles": 2, "cycle.picks": 5, "preprocess.size": 32, "preprocess.crop": 0.5, "data_dir": str(tmp_path)},
    )
    for method in ("linprobe", "knn"):
        record = run_method(method, data, 0, config, "cpu")
        first, last = record["cycles"]
        assert (first["n_labelled"], last["n_labelled"]) == (40, 50) and last["n_pool"] == 1490
        assert last["auroc"] > 0.75 and last["precision_at_1pct"] > 0.5, (method, last)  # base rate 0.15

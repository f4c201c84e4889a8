"""Ranking metrics: agreement with scikit-learn, hand-worked cases, tie-breaking by id hash, edge pools."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from anomalymatch.metrics import (
    METRIC_NAMES,
    auroc,
    average_precision,
    compute_metrics,
    efficiency_curve,
    pr_curve_points,
    precision_at,
    rank_order,
    recall_at,
    roc_curve_points,
    tie_keys,
    top_k,
)


def _pool(seed: int, n: int = 3000, rate: float = 0.05, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int8)
    s = rng.normal(size=n) + 1.5 * y
    if decimals is not None:
        s = np.round(s, decimals)  # many ties, including across classes
    ids = np.array([f"img{i:05d}" for i in rng.permutation(n)])
    return y, s, ids


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_sklearn(seed: int, decimals: int | None) -> None:
    y, s, _ = _pool(seed, decimals=decimals)
    assert abs(auroc(y, s) - roc_auc_score(y, s)) < 1e-12
    assert abs(average_precision(y, s) - average_precision_score(y, s)) < 1e-12
    assert abs(auroc(y, s.astype(np.float32)) - roc_auc_score(y, s.astype(np.float32))) < 1e-12


def test_curves_match_sklearn() -> None:
    y, s, _ = _pool(3, n=500, decimals=1)
    fpr, tpr, thr = roc_curve_points(y, s)
    ref_fpr, ref_tpr, ref_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-15)
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])
    recall, precision, pthr = pr_curve_points(y, s)
    ref_p, ref_r, ref_pthr = precision_recall_curve(y, s)
    np.testing.assert_allclose(recall, ref_r[:-1][::-1], atol=1e-15)
    np.testing.assert_allclose(precision, ref_p[:-1][::-1], atol=1e-15)
    np.testing.assert_array_equal(pthr, ref_pthr[::-1])


def test_hand_worked_ten_items() -> None:
    # scores 9..0 descending by index; anomalies at ranks 1, 3 and 8.
    scores = np.arange(10, 0, -1, dtype=np.float64)
    labels = np.zeros(10, dtype=int)
    labels[[0, 2, 7]] = 1
    ids = [f"{i}" for i in range(10)]
    assert precision_at(labels, scores, ids, 0.1) == 1.0  # top-1 is an anomaly
    assert recall_at(labels, scores, ids, 0.1) == pytest.approx(1 / 3)
    assert precision_at(labels, scores, ids, 0.3) == pytest.approx(2 / 3)
    assert recall_at(labels, scores, ids, 0.3) == pytest.approx(2 / 3)
    # AUROC by counting: pairs (anomaly above nominal) = 7 + 6 + 2 = 15 of 3 * 7 = 21.
    assert auroc(labels, scores) == pytest.approx(15 / 21)
    # AP = mean of precision at each anomaly: (1/1 + 2/3 + 3/8) / 3.
    assert average_precision(labels, scores) == pytest.approx((1 + 2 / 3 + 3 / 8) / 3)


def test_top_k_rule() -> None:
    assert top_k(10, 0.001) == 1  # at least one image
    assert top_k(10_000, 0.001) == 10
    assert top_k(10_000, 0.01) == 100
    assert top_k(100, 0.07) == 7  # 100 * 0.07 = 7.000000000000001
    assert top_k(100, 0.29) == 29  # 100 * 0.29 = 28.999999999999996 in floating point
    assert top_k(1999, 0.001) == 1
    assert top_k(5, 1.0) == 5
    for bad_n, bad_fraction in [(0, 0.1), (10, 0.0), (10, 1.5)]:
        with pytest.raises(ValueError):
            top_k(bad_n, bad_fraction)


def test_rank_order_descending_with_id_hash_tiebreak() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5], dtype=np.float32)
    ids = np.array(["c", "z", "a", "b", "b2"])
    order = rank_order(scores, ids)
    assert order[0] == 1 and order[-1] == 3  # scores first
    tied = np.array([0, 2, 4])
    expected = tied[np.argsort(tie_keys(ids[tied]))]  # inside the tie: by the ids' hash
    assert order[1:4].tolist() == expected.tolist()


def test_ties_broken_by_id_hash_never_by_label() -> None:
    # One clear winner, then nine tied items; the top-20% slice (2 images) cuts through the tie.
    rng = np.random.default_rng(7)
    scores = np.array([2.0] + [1.0] * 9)
    ids = np.array(["k", "e", "b", "h", "a", "i", "c", "g", "d", "f"])
    second = ids[1:][np.argmin(tie_keys(ids[1:]))]
    for _ in range(20):
        labels = np.zeros(10, dtype=int)
        labels[rng.choice(np.arange(1, 10), size=3, replace=False)] = 1  # permute labels among the tied items
        order = rank_order(scores, ids)
        assert ids[order][:2].tolist() == ["k", second]
        expected = (labels[ids == "k"][0] + labels[ids == second][0]) / 2
        assert precision_at(labels, scores, ids, 0.2) == expected


def test_ids_that_name_their_class_do_not_move_a_tie() -> None:
    # CIFAR-like ids carry the class name; 'airplane' sorts before every other class. A model that scores
    # everything alike must find the base rate in its top slice, not the class that sorts first.
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ids = np.array([f"{c}_{i:05d}" for c in classes for i in range(300)])
    labels = np.array([c == "airplane" for c in classes for _ in range(300)], dtype=int)
    scores = np.zeros(len(ids))
    assert 0.03 <= precision_at(labels, scores, ids, 0.1) <= 0.2  # base rate 0.1; alphabetical would give 1.0
    m = compute_metrics(labels, scores, ids)
    assert m["auroc"] == 0.5 and m["precision_at_1pct"] <= 0.34


def test_tiebreak_independent_of_input_order() -> None:
    y, s, ids = _pool(4, n=400, decimals=0)
    ref = compute_metrics(y, s, ids)
    perm = np.random.default_rng(0).permutation(len(y))
    assert compute_metrics(y[perm], s[perm], ids[perm]) == ref
    assert ids[rank_order(s, ids)].tolist() == ids[perm][rank_order(s[perm], ids[perm])].tolist()


def test_compute_metrics_keys_and_values() -> None:
    y, s, ids = _pool(5, n=5000, rate=0.01, decimals=2)
    m = compute_metrics(y, s, ids)
    assert set(m) == set(METRIC_NAMES) | {"n", "n_anomalies"}
    assert m["n"] == 5000 and m["n_anomalies"] == int(y.sum())
    assert m["auroc"] == auroc(y, s)
    assert m["auprc"] == average_precision(y, s)
    assert m["recall_at_1pct"] == recall_at(y, s, ids, 0.01)
    assert m["precision_at_0.1pct"] == precision_at(y, s, ids, 0.001)
    order = rank_order(s, ids)
    assert m["precision_at_1pct"] == y[order[:50]].sum() / 50
    assert m["recall_at_0.1pct"] == y[order[:5]].sum() / y.sum()


def test_one_anomaly_pool() -> None:
    scores = np.linspace(0, 1, 2000)
    labels = np.zeros(2000, dtype=int)
    labels[-1] = 1  # the best score
    m = compute_metrics(labels, scores, [str(i) for i in range(2000)])
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0
    assert m["recall_at_0.1pct"] == 1.0 and m["precision_at_0.1pct"] == 0.5  # top 2 images
    assert m["recall_at_1pct"] == 1.0 and m["precision_at_1pct"] == 0.05
    labels[-1], labels[0] = 0, 1  # now the worst score
    m = compute_metrics(labels, scores, [str(i) for i in range(2000)])
    assert m["auroc"] == 0.0 and m["recall_at_1pct"] == 0.0
    assert m["auprc"] == pytest.approx(1 / 2000)


def test_zero_anomaly_pool_gives_nan_where_undefined() -> None:
    m = compute_metrics(np.zeros(50, dtype=int), np.arange(50.0), [str(i) for i in range(50)])
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert math.isnan(m["recall_at_1pct"]) and m["precision_at_1pct"] == 0.0
    assert m["n_anomalies"] == 0
    assert math.isnan(auroc(np.ones(5, dtype=int), np.arange(5.0)))
    with pytest.raises(ValueError, match="at least one anomaly"):
        efficiency_curve(np.zeros(5, dtype=int), np.arange(5.0), list("abcde"))
    with pytest.raises(ValueError, match="both anomalies"):
        roc_curve_points(np.ones(5, dtype=int), np.arange(5.0))


def test_efficiency_curve() -> None:
    y, s, ids = _pool(6, n=1000, decimals=1)
    inspected, found = efficiency_curve(y, s, ids)
    assert inspected.shape == found.shape == (1001,)
    assert (inspected[0], found[0]) == (0.0, 0.0)
    assert (inspected[-1], found[-1]) == (1.0, 1.0)
    assert np.all(np.diff(inspected) > 0) and np.all(np.diff(found) >= 0)
    k = top_k(1000, 0.01)
    assert found[k] == recall_at(y, s, ids, 0.01)
    # a perfect ranking finds everything after inspecting exactly the anomalies
    inspected, found = efficiency_curve(y, y.astype(float), ids)
    assert found[int(y.sum())] == 1.0 and found[int(y.sum()) - 1] < 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="2 of 4 scores are NaN"):
        rank_order([0.1, np.nan, np.nan, 0.3], list("abcd"))
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0, 1, 0], np.array([0.1, np.nan, 0.2], dtype=np.float32), list("abc"))
    with pytest.raises(ValueError, match="0 \\(nominal\\) or 1"):
        auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one entry per score"):
        compute_metrics([0, 1], [0.1, 0.2, 0.3], list("abc"))
    with pytest.raises(ValueError, match="one entry per score"):
        compute_metrics([0, 1, 1], [0.1, 0.2, 0.3], list("ab"))
    with pytest.raises(ValueError, match="no scores"):
        compute_metrics([], [], [])
    assert auroc([False, True, True], [0.1, 0.3, 0.2]) == 1.0

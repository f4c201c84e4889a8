"""Active-learning bookkeeping: labelled and pool never overlap; oracle picks move from pool to labelled."""

import numpy as np
import pytest

from anomalymatch.metrics import tie_keys
from training.benchmark import split_protocol
from training.cycle import LabelledPool, oracle_picks, select_candidates


def test_split_protocol_is_disjoint_and_exact():
    rng = np.random.default_rng(0)
    is_anomaly = rng.random(5000) < 0.1
    lab, y, pool = split_protocol(is_anomaly, 5, 495, 2000, 0.01, seed=3)
    assert len(lab) == 500 and y.sum() == 5 and is_anomaly[lab].sum() == 5
    assert len(pool) == 2000 and is_anomaly[pool].sum() == 20
    assert not set(lab) & set(pool)
    lab2, _, pool2 = split_protocol(is_anomaly, 5, 495, 2000, 0.01, seed=3)
    assert np.array_equal(lab, lab2) and np.array_equal(pool, pool2)
    _, _, rest = split_protocol(is_anomaly, 10, 30, None, None, seed=0)
    assert len(rest) == 5000 - 40


def test_split_protocol_names_shortage():
    is_anomaly = np.array([True] * 3 + [False] * 100)
    with pytest.raises(ValueError, match="need 5 anomalies"):
        split_protocol(is_anomaly, 5, 10, None, None, seed=0)
    with pytest.raises(ValueError, match="only 1 and"):
        split_protocol(is_anomaly, 2, 10, 50, 0.1, seed=0)


def test_state_rejects_overlap_and_label_moves_images():
    with pytest.raises(ValueError, match="also in the pool"):
        LabelledPool([0, 1], [1, 0], [1, 2, 3])
    state = LabelledPool([0, 1], [1, 0], [2, 3, 4, 5])
    state.label(np.array([4, 2]), np.array([1, 0]))
    assert sorted(state.pool_idx.tolist()) == [3, 5]
    assert state.labelled_idx.tolist() == [0, 1, 4, 2] and state.labelled_y.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="not in the pool"):
        state.label(np.array([0]), np.array([1]))


def test_oracle_picks_top_true_anomalies_and_false_positives():
    ids = np.array([f"img{i:02d}" for i in range(10)], dtype=object)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    truth = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 0])
    pos, y = oracle_picks(ids, scores, truth, picks=2)
    assert pos.tolist() == [1, 4, 0, 2]
    assert y.tolist() == [1, 1, 0, 0]


def test_select_candidates_breaks_ties_by_id_hash():
    ids = np.array(["b", "a", "c"], dtype=object)
    tied = sorted(["a", "b"], key=lambda i: tie_keys(np.array([i]))[0])
    assert select_candidates(ids, np.array([0.5, 0.5, 0.9]), 3) == [("c", 0.9), (tied[0], 0.5), (tied[1], 0.5)]


def test_label_table_of_state():
    ids = np.array(["x", "y", "z"], dtype=object)
    table = LabelledPool([2, 0], [1, 0], [1]).label_table(ids)
    assert dict((k, v.value) for k, v in table.as_dict().items()) == {"z": "anomaly", "x": "nominal"}

"""OnnxScorer's I/O-binding path (one reused input buffer, outputs bound and copied once) against the
plain ``session.run`` path, on the CPU provider: the same scores and embeddings, batch after batch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from anomalymatch.io_binding import BoundRunner
from anomalymatch.scoring import OnnxScorer
from tests.helpers.serving import SIZE, export_tiny_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("iob") / "m.onnx", seed=5, version="9")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (37, SIZE, SIZE, 3), dtype=np.uint8)


def test_bound_scores_equal_plain_scores_across_uneven_batches(model_path, images):
    plain = OnnxScorer(model_path, providers=["CPUExecutionProvider"])
    bound = OnnxScorer(model_path, providers=["CPUExecutionProvider"], io_binding=True)
    assert not plain.io_binding and plain.input_memory == "session.run"
    assert bound.io_binding
    expected = plain.score(images, batch_size=8)
    got = bound.score(images, batch_size=8)  # 4 full batches and a last one of 5 in the same buffer
    assert bound.input_memory == "cpu"
    np.testing.assert_array_equal(got, expected)
    # a later call with other images must not see the previous batch's pixels
    np.testing.assert_array_equal(bound.score(images[::-1], batch_size=8), expected[::-1])
    p_plain, f_plain = plain.score_and_embed(images, batch_size=16)
    p_bound, f_bound = bound.score_and_embed(images, batch_size=16)
    np.testing.assert_array_equal(p_bound, p_plain)
    np.testing.assert_array_equal(f_bound, f_plain)
    assert f_bound.dtype == np.float32 and f_bound.shape[0] == len(images)


def test_bound_buffer_grows_for_a_bigger_batch(model_path, images):
    scorer = OnnxScorer(model_path, providers=["CPUExecutionProvider"], io_binding=True)
    scorer.score(images[:4], batch_size=4)
    assert scorer._runner.capacity == 4
    scores = scorer.score(images, batch_size=32)
    assert scorer._runner.capacity == 32
    np.testing.assert_array_equal(scores, OnnxScorer(model_path, providers=["CPUExecutionProvider"]).score(images))


def test_concurrent_callers_each_get_their_own_scores(model_path, images):
    scorer = OnnxScorer(model_path, providers=["CPUExecutionProvider"], io_binding=True)
    expected = OnnxScorer(model_path, providers=["CPUExecutionProvider"]).score(images, batch_size=4)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        order = np.random.default_rng(k).permutation(len(images))
        results[k] = scorer.score(images[order], batch_size=4)[np.argsort(order)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_array_equal(results[k], expected)


def test_runner_refuses_a_batch_that_does_not_fit(model_path, images):
    scorer = OnnxScorer(model_path, providers=["CPUExecutionProvider"])
    runner = BoundRunner(scorer.session, scorer.input_name, 4, (SIZE, SIZE, 3), "cpu")
    with pytest.raises(ValueError, match="does not fit"):
        runner.run(images[:5], [scorer.score_output])
    with pytest.raises(ValueError, match="'cuda' or 'cpu'"):
        BoundRunner(scorer.session, scorer.input_name, 4, (SIZE, SIZE, 3), "tpu")

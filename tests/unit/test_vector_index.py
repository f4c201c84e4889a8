"""The approximate index behind "more like this": chosen by size, close to exact search on clustered vectors,
kept beside the vectors' file and reused, and exact search (with a warning) or a clear error without faiss."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from anomalymatch.embeddings import EmbeddingSet, embeddings_path
from anomalymatch.vector_index import IvfPqIndex, SimilarConfig, faiss_available

pytestmark = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (pip install faiss-cpu)")

DIM = 64
SMALL = SimilarConfig(approximate_above=1000, pq_m=8, nbits=6, nprobe=8, refine=10)


def _clustered(n: int, seed: int = 0, clusters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Vectors in clusters (like a model's features, not i.i.d. noise), and the cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM)) + 2.0  # a common mean: unrelated vectors are not orthogonal
    return centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, DIM)), centres


def _ids(n: int) -> list[str]:
    return [f"img{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def clustered():
    vectors, centres = _clustered(6000)
    exact = EmbeddingSet.from_vectors(_ids(6000), vectors, "3")
    approx = EmbeddingSet.from_vectors(_ids(6000), vectors, "3", search=SMALL)
    return exact, approx, centres


def test_above_the_threshold_the_index_is_used_and_finds_what_exact_search_finds(clustered) -> None:
    exact, approx, centres = clustered
    assert approx.approximate and not exact.approximate
    assert EmbeddingSet.from_vectors(_ids(900), exact.vectors[:900], search=SMALL).approximate is False  # below
    rng = np.random.default_rng(1)
    recalls = []
    for c in range(100):
        query = centres[c % len(centres)] + 0.6 * rng.normal(size=DIM)  # fresh draws, not stored vectors
        got, want = approx.nearest(query, k=10), exact.nearest(query, k=10)
        recalls.append(len({i for i, _ in got} & {i for i, _ in want}) / 10)
        sims = dict(want)
        assert all(s == pytest.approx(sims[i], abs=1e-5) for i, s in got if i in sims)  # re-ranked exactly
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    print(f"recall@10 of the IVF-PQ index against exact search: {np.mean(recalls):.3f}")
    assert np.mean(recalls) >= 0.8


def test_the_index_honours_exclude_and_several_queries(clustered) -> None:
    exact, approx, _ = clustered
    query = approx.vector_of("img00007")
    first = approx.nearest(query, k=5)
    assert first[0][0] == "img00007" and first[0][1] == pytest.approx(1.0, abs=1e-3)
    skipped = approx.nearest(query, k=5, exclude={"img00007", first[1][0]})
    assert {"img00007", first[1][0]}.isdisjoint(i for i, _ in skipped) and len(skipped) == 5
    two = np.stack([approx.vector_of("img00007"), approx.vector_of("img00100")])
    assert {i for i, _ in approx.nearest(two, k=2)} == {"img00007", "img00100"}  # each query finds itself
    assert len(approx.nearest(query, k=10_000)) <= 6000


def test_the_trained_index_is_kept_beside_the_file_and_reused(tmp_path, monkeypatch) -> None:
    vectors, _ = _clustered(3000, seed=2)
    path = EmbeddingSet.from_vectors(_ids(3000), vectors, "3").save(embeddings_path(tmp_path, "3"))
    loaded = EmbeddingSet.load(path, SMALL)
    hits = loaded.nearest(vectors[0], k=5)
    kept = list(path.parent.glob("3.npz.*.faiss"))
    assert len(kept) == 1 and not list(path.parent.glob(".*tmp"))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the kept index should have been read, not rebuilt")

    monkeypatch.setattr(IvfPqIndex, "build", no_rebuild)
    assert EmbeddingSet.load(path, SMALL).nearest(vectors[0], k=5) == hits  # another process: read back
    monkeypatch.undo()

    EmbeddingSet.from_vectors(_ids(3000), vectors[::-1], "3").save(path)  # the file changes: a new index
    again = EmbeddingSet.load(path, SMALL)
    assert again.nearest(vectors[-1], k=1)[0][0] == "img00000"
    now = list(path.parent.glob("3.npz.*.faiss"))
    assert len(now) == 1 and now != kept  # the stale index was deleted


def test_without_faiss_auto_searches_exactly_with_a_warning_and_forcing_says_what_to_install(
    clustered, monkeypatch, caplog
) -> None:
    exact, _, _ = clustered
    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" now raises ImportError
    auto = EmbeddingSet(exact.ids, exact.vectors, "3", SMALL)
    with caplog.at_level(logging.WARNING, logger="anomalymatch.embeddings"):
        assert auto.nearest(exact.vector_of("img00003"), k=5) == exact.nearest(exact.vector_of("img00003"), k=5)
    assert "pip install faiss-cpu" in caplog.text and not auto.approximate
    forced = EmbeddingSet(exact.ids, exact.vectors, "3", SimilarConfig(search="approximate"))
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        forced.nearest(exact.vector_of("img00003"), k=5)
    small_but_forced = EmbeddingSet(exact.ids[:10], exact.vectors[:10], "3", SimilarConfig(search="exact"))
    assert not small_but_forced.approximate


def test_bad_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="similar.search must be one of"):
        SimilarConfig(search="fast")
    with pytest.raises(ValueError, match="nprobe and refine must be >= 1"):
        SimilarConfig(nprobe=0)
    vectors, _ = _clustered(2000)
    odd = EmbeddingSet.from_vectors(_ids(2000), vectors, search=SimilarConfig(search="approximate", pq_m=7))
    with pytest.raises(ValueError, match="does not divide the vector length 64: use one of"):
        odd.nearest(vectors[0], k=3)
    from anomalymatch.config import config_from_dict

    assert config_from_dict({"similar": {"approximate_above": 10}}).similar.approximate_above == 10

"""Feature vectors of images ("embeddings") and exact cosine search over them: "more like this".

A model exported with embeddings (``registry.onnx_export``) has a second output, the pooled features its
classifier reads. Each retrain stores the vectors of the images it held (labelled images and the pool
sample) for the registered version, as float16 unit vectors in ``<data>/embeddings/<version>.npz``;
``EmbeddingSet.nearest`` finds the most similar ones by cosine similarity.

Up to ``SimilarConfig.approximate_above`` vectors (2 million by default) search is exact: one
matrix-vector product over float32 copies of the vectors, made on the first search (5.1 GB per million
1280-d vectors in memory, 2.6 GB on disk). Above it, an IVF-PQ index (``anomalymatch.vector_index``,
needs faiss) proposes candidates that are re-ranked exactly; without faiss the search stays exact and says
so in the log. The trained index is kept beside the vectors' file. ``EmbeddingSet.load`` also reads the
embeddings of a bulk scoring job folder (``anomalymatch score --embeddings``). Torch-free.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from anomalymatch.vector_index import IvfPqIndex, SearchMode, SimilarConfig, faiss_available, import_faiss, open_index

log = logging.getLogger(__name__)
CHUNK = 262_144  # rows per product
QUERY_BLOCK = 64  # queries per product: with CHUNK, bounds the temporary at 64 MB
_CONVERT_LOCK = threading.Lock()
_INDEX_LOCK = threading.Lock()


class NoEmbeddingError(LookupError):
    """The image has no stored vector for this model version."""


def embeddings_path(data_dir: str | os.PathLike, version: str) -> Path:
    """Where the vectors of a registered model version are kept."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(version))
    return Path(data_dir) / "embeddings" / f"{safe}.npz"


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or inf; the model's features are broken")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def unit_float16(vectors: np.ndarray, block: int = 65_536) -> np.ndarray:
    """``normalise(vectors)`` as float16, a block of rows at a time (no float32 copy of all of them)."""
    if np.ndim(vectors) != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {np.shape(vectors)}")
    out = np.empty(np.shape(vectors), dtype=np.float16)
    for start in range(0, len(vectors), block):
        out[start : start + block] = normalise(vectors[start : start + block])
    return out


def file_identity(path: Path) -> str:
    """A short name for a file's current state (size, modification time, inode): a rewrite changes it."""
    st = path.stat()
    return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()[:12]


def _max_similarity(rows_of: Callable[[int, int], np.ndarray], n: int, q: np.ndarray) -> np.ndarray:
    """Per row of an (n, D) matrix read in blocks (``rows_of(start, stop)``, float32), its best cosine
    similarity to the unit queries ``q``; the temporary stays at ``CHUNK`` x ``QUERY_BLOCK`` floats."""
    out = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, CHUNK):
        block_rows = rows_of(start, start + CHUNK)
        part = out[start : start + CHUNK]
        for first in range(0, len(q), QUERY_BLOCK):
            np.maximum(part, (block_rows @ q[first : first + QUERY_BLOCK].T).max(axis=1), out=part)
    return out


def _top(ids: np.ndarray, sims: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` best (finite) similarities, best first, ties by id."""
    take = min(k, int(np.isfinite(sims).sum()))
    if take == 0:
        return []
    top = np.argpartition(-sims, take - 1)[:take]
    top = top[np.lexsort((ids[top], -sims[top]))]
    return [(str(ids[i]), float(sims[i])) for i in top]


@dataclass(frozen=True)
class EmbeddingSet:
    """Image ids and their unit feature vectors (float16), searched by cosine similarity: exactly, or
    through an IVF-PQ index above ``search.approximate_above`` vectors (see the module docstring).
    ``origin`` and ``identity`` (set by ``load``) say where a trained index is kept and for which state
    of the vectors' file."""

    ids: np.ndarray  # str, (N,)
    vectors: np.ndarray  # float16, (N, D), unit rows
    model_version: str = ""
    search: SimilarConfig = field(default=SimilarConfig(), compare=False)
    origin: Path | None = field(default=None, compare=False)
    identity: str = field(default="", compare=False)

    @classmethod
    def from_vectors(
        cls,
        ids: Sequence[str],
        vectors: np.ndarray,
        model_version: str = "",
        search: SimilarConfig = SimilarConfig(),
        origin: Path | None = None,
        identity: str = "",
    ) -> EmbeddingSet:
        ids_arr = np.asarray([str(i) for i in ids])
        if len(ids_arr) != len(vectors):
            raise ValueError(f"{len(ids_arr)} ids but {len(vectors)} vectors; give one vector per id")
        if len(set(ids_arr.tolist())) != len(ids_arr):
            raise ValueError("ids must be unique")
        return cls(ids_arr, unit_float16(vectors), model_version, search, origin, identity)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=self.ids, vectors=self.vectors, model_version=np.asarray(self.model_version))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, search: SimilarConfig = SimilarConfig()) -> EmbeddingSet:
        """The vectors a retrain stored (an ``.npz`` file), or those of a bulk scoring job folder scored
        with ``--embeddings`` (``serving.bulk_embeddings``)."""
        path = Path(path)
        if path.is_dir():
            from serving.bulk_embeddings import load_job_embeddings

            return load_job_embeddings(path, search)
        if not path.is_file():
            raise FileNotFoundError(
                f"no embeddings at {path}: they are stored by each retrain of a model exported with embeddings"
            )
        identity = file_identity(path)
        with np.load(path, allow_pickle=False) as data:
            return cls(data["ids"], data["vectors"], str(data["model_version"]), search, path, identity)

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {str(i): k for k, i in enumerate(self.ids)}

    def vector_of(self, image_id: str) -> np.ndarray:
        """The stored unit vector of ``image_id`` (``NoEmbeddingError`` when it has none)."""
        row = self._row_of.get(image_id)
        if row is None:
            raise NoEmbeddingError(
                f"image {image_id!r} has no stored embedding for model version {self.model_version!r}: "
                "vectors are kept for the images a retrain held (the labelled ones and the pool sample)"
            )
        return self.vectors[row].astype(np.float32)

    @cached_property
    def _vectors32(self) -> np.ndarray:
        with _CONVERT_LOCK:  # concurrent first searches make one copy, not one each
            return self.vectors.astype(np.float32)  # BLAS has no float16 product: convert once, not per query

    def similarity(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity (N,) of every stored vector to its nearest query (rows of ``queries``), exact;
        the temporary stays at ``CHUNK`` x ``QUERY_BLOCK`` floats however many queries there are."""
        vectors = self._vectors32
        return _max_similarity(lambda a, b: vectors[a:b], len(self), normalise(np.atleast_2d(queries)))

    @cached_property
    def approximate(self) -> bool:
        """Whether ``nearest`` goes through the IVF-PQ index (by ``search``: the mode and the size)."""
        mode = self.search.mode
        if mode is SearchMode.EXACT or (mode is SearchMode.AUTO and len(self) <= self.search.approximate_above):
            return False
        if faiss_available():
            return True
        if mode is SearchMode.APPROXIMATE:
            import_faiss()  # raises the ImportError that says what to install
        log.warning(
            "%d vectors are above similar.approximate_above=%d but faiss is not installed: searching exactly "
            "(slower, %.1f GB more memory); pip install faiss-cpu for the approximate index",
            len(self),
            self.search.approximate_above,
            self.vectors.size * 4 / 1e9,
        )
        return False

    @property
    def index(self) -> IvfPqIndex:
        """The trained IVF-PQ index: read from beside ``origin``, else built (minutes per million vectors)
        and kept there; one per process."""
        with _INDEX_LOCK:
            if "_index" not in self.__dict__:
                self.__dict__["_index"] = open_index(self.vectors, self.search, self.origin, self.identity)
            return self.__dict__["_index"]

    def nearest(self, query: np.ndarray, k: int = 50, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The ``k`` stored images most similar to ``query`` (one vector, or several: the best match to any),
        most similar first, ties by id; ids in ``exclude`` are skipped. Through the index (``approximate``)
        the similarities are exact but a true neighbour can be missed."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.approximate:
            return self._nearest_indexed(normalise(np.atleast_2d(query)), k, exclude)
        sims = self.similarity(query)
        if exclude:
            sims[np.isin(self.ids, list(exclude))] = -np.inf
        return _top(self.ids, sims, k)

    def _nearest_indexed(self, q: np.ndarray, k: int, exclude: Collection[str]) -> list[tuple[str, float]]:
        excluded = np.asarray(sorted(r for r in map(self._row_of.get, exclude) if r is not None), dtype=np.int64)
        per_query = self.search.refine * k
        blocks = [
            self.index.candidates(q[f : f + QUERY_BLOCK], per_query, excluded) for f in range(0, len(q), QUERY_BLOCK)
        ]
        rows = np.unique(np.concatenate(blocks))
        sims = _max_similarity(lambda a, b: self.vectors[rows[a:b]].astype(np.float32), len(rows), q)
        return _top(self.ids[rows], sims, k)

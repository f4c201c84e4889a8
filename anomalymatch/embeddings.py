"""Feature vectors of images ("embeddings") and exact cosine search over them: "more like this".

A model exported with embeddings (``registry.onnx_export``) has a second output, the pooled features its
classifier reads. Each retrain stores the vectors of the images it held (labelled images and the pool
sample) for the registered version, as float16 unit vectors in ``<data>/embeddings/<version>.npz``;
``EmbeddingSet.nearest`` finds the most similar ones by cosine similarity.

Search is exact: one matrix-vector product over float32 copies of the vectors, made on the first search
(5.1 GB per million 1280-d vectors in memory, 2.6 GB on disk). Torch-free.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

CHUNK = 262_144  # rows per product
QUERY_BLOCK = 64  # queries per product: with CHUNK, bounds the temporary at 64 MB
_CONVERT_LOCK = threading.Lock()


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


@dataclass(frozen=True)
class EmbeddingSet:
    """Image ids and their unit feature vectors (float16), searched exactly by cosine similarity."""

    ids: np.ndarray  # str, (N,)
    vectors: np.ndarray  # float16, (N, D), unit rows
    model_version: str = ""

    @classmethod
    def from_vectors(cls, ids: Sequence[str], vectors: np.ndarray, model_version: str = "") -> EmbeddingSet:
        ids_arr = np.asarray([str(i) for i in ids])
        if len(ids_arr) != len(vectors):
            raise ValueError(f"{len(ids_arr)} ids but {len(vectors)} vectors; give one vector per id")
        if len(set(ids_arr.tolist())) != len(ids_arr):
            raise ValueError("ids must be unique")
        return cls(ids_arr, normalise(vectors).astype(np.float16), model_version)

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
    def load(cls, path: str | os.PathLike) -> EmbeddingSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no embeddings at {path}: they are stored by each retrain of a model exported with embeddings"
            )
        with np.load(path, allow_pickle=False) as data:
            return cls(data["ids"], data["vectors"], str(data["model_version"]))

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
        """Cosine similarity (N,) of every stored vector to its nearest query (rows of ``queries``); the
        temporary stays at ``CHUNK`` x ``QUERY_BLOCK`` floats however many queries there are."""
        q = normalise(np.atleast_2d(queries))
        vectors = self._vectors32
        out = np.full(len(self), -np.inf, dtype=np.float32)
        for start in range(0, len(self), CHUNK):
            part = out[start : start + CHUNK]
            for first in range(0, len(q), QUERY_BLOCK):
                block = vectors[start : start + CHUNK] @ q[first : first + QUERY_BLOCK].T
                np.maximum(part, block.max(axis=1), out=part)
        return out

    def nearest(self, query: np.ndarray, k: int = 50, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The ``k`` stored images most similar to ``query`` (one vector, or several: the best match to any),
        most similar first, ties by id; ids in ``exclude`` are skipped."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        sims = self.similarity(query)
        if exclude:
            sims[np.isin(self.ids, list(exclude))] = -np.inf
        take = min(k, int(np.isfinite(sims).sum()))
        if take == 0:
            return []
        top = np.argpartition(-sims, take - 1)[:take]
        top = top[np.lexsort((self.ids[top], -sims[top]))]
        return [(str(self.ids[i]), float(sims[i])) for i in top]

"""The embeddings a bulk job stored (``anomalymatch score --embeddings``), read back for search.

``read_embeddings(out_dir)`` gives the committed rows' ids, sources and features as one (N, D) float16
matrix (2.6 GB per million 1280-d rows), filled shard by shard without a float32 copy.
``load_job_embeddings`` turns them into an ``EmbeddingSet`` so "more like this" works across the whole
job (``anomalymatch similar ID --bulk OUT``; ``EmbeddingSet.load(OUT)``). An id that occurs in more than
one source of the job is named ``<source>::<id>`` there, so every vector keeps a unique name. The
set's trained approximate index is kept in the job folder, named after the committed shards it indexes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalymatch.embeddings import EmbeddingSet, unit_float16
from anomalymatch.vector_index import SimilarConfig
from serving.bulk import EMBEDDING_COLUMN, MANIFEST, read_manifest

SOURCE_SEPARATOR = "::"


@dataclass(frozen=True)
class JobEmbeddings:
    ids: np.ndarray  # str (N,): the image's id within its source
    sources: np.ndarray  # str (N,): the source it was read from
    vectors: np.ndarray  # float16 (N, D): the model's pooled features, as stored (not normalised)
    model_version: str
    identity: str  # names the committed state read (model version and shard list)


def read_embeddings(out_dir: str | os.PathLike) -> JobEmbeddings:
    """Every committed row's id, source and features (in shard order) of a job scored with embeddings."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{out_dir} is not a bulk job folder (no {MANIFEST}): score into it first")
    manifest = read_manifest(out_dir)
    if not manifest.get("embeddings", False):
        raise ValueError(
            f"the bulk job in {out_dir} was scored without embeddings: score the sources again into a new "
            "--out folder with --embeddings"
        )
    shards = [s for s in manifest["shards"] if s["rows"]]
    n = sum(s["rows"] for s in shards)
    ids, sources = np.empty(n, dtype=object), np.empty(n, dtype=object)
    vectors: np.ndarray | None = None
    row = 0
    for shard in shards:
        table = pq.read_table(out_dir / shard["file"], columns=["id", "source", EMBEDDING_COLUMN])
        column = table[EMBEDDING_COLUMN].combine_chunks()
        dim = column.type.list_size
        if vectors is None:
            vectors = np.empty((n, dim), dtype=np.float16)
        part = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        vectors[row : row + len(part)] = part
        ids[row : row + len(part)] = table["id"].to_pylist()
        sources[row : row + len(part)] = table["source"].to_pylist()
        row += len(part)
    assert row == n, "the manifest's row counts match its shards"
    state = json.dumps([manifest["model_version"], manifest["shards"]], sort_keys=True)
    return JobEmbeddings(
        ids=ids.astype(str),
        sources=sources.astype(str),
        vectors=vectors if vectors is not None else np.empty((0, 0), np.float16),
        model_version=manifest["model_version"],
        identity=hashlib.sha256(state.encode()).hexdigest()[:12],
    )


def load_job_embeddings(out_dir: str | os.PathLike, search: SimilarConfig = SimilarConfig()) -> EmbeddingSet:
    """The job's embeddings as unit vectors for "more like this" (ids repeated across sources qualified)."""
    out_dir = Path(out_dir)
    found = read_embeddings(out_dir)
    if not len(found.ids):
        raise ValueError(f"the bulk job in {out_dir} has no scored images yet: run or resume it first")
    repeated = {i for i, c in Counter(found.ids.tolist()).items() if c > 1}
    names = [f"{s}{SOURCE_SEPARATOR}{i}" if i in repeated else i for i, s in zip(found.ids, found.sources)]
    return EmbeddingSet(
        np.asarray(names),
        unit_float16(found.vectors),
        found.model_version,
        search,
        out_dir / "embeddings",
        found.identity,
    )

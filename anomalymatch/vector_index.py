"""An approximate nearest-neighbour index (faiss IVF-PQ) for "more like this" over millions of vectors.

Exact cosine search (``anomalymatch.embeddings``) reads every stored vector per query: fine up to a few
million 1280-d vectors, slow and memory-hungry (a float32 copy, 5.1 GB per million) beyond. Above
``SimilarConfig.approximate_above`` vectors the search goes through this index instead:

- an inverted file of ``nlist`` k-means cells over the unit vectors (L2 on unit vectors ranks as cosine),
  each vector stored as ``pq_m`` product-quantiser codes of ``nbits`` bits (64 bytes a vector by default);
- a query scans the ``nprobe`` nearest cells and keeps ``refine`` x k candidates, which are then re-ranked
  by their exact cosine similarity from the stored float16 vectors: the scores returned are exact, only
  the candidate list is approximate.

Training takes minutes at a million vectors, so a trained index is written beside the vectors it indexes
(``<vectors file>.<identity>-<params>.faiss``; the identity changes whenever that file does, and older
index files of it are deleted) and read back by later processes. faiss is optional (``pip install
faiss-cpu``) and imported only here, only when an index is built or read.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
ADD_BLOCK = 65_536  # rows converted to float32 and added at a time: bounds the temporary


class SearchMode(str, Enum):
    AUTO = "auto"  # exact up to approximate_above vectors, the index above (exact, with a warning, without faiss)
    EXACT = "exact"
    APPROXIMATE = "approximate"  # the index whatever the size; an error without faiss


@dataclass(frozen=True)
class SimilarConfig:
    """How "more like this" searches (the config file's ``similar`` section).

    ``search``: auto, exact or approximate. ``approximate_above``: in auto, the number of stored vectors
    above which the IVF-PQ index is used. Index parameters: ``nlist`` cells (0 = a power of two near
    sqrt(N)), ``pq_m`` codes per vector (must divide the vector length), ``nbits`` per code, ``nprobe``
    cells scanned per query, ``refine`` candidates per result re-ranked exactly, ``train_size`` vectors
    the k-means and quantisers learn from (0 = max(64 x nlist, 65,536), at most N)."""

    search: str = SearchMode.AUTO.value
    approximate_above: int = 2_000_000
    nlist: int = 0
    pq_m: int = 64
    nbits: int = 8
    nprobe: int = 64
    refine: int = 10
    train_size: int = 0

    def __post_init__(self) -> None:
        try:
            SearchMode(self.search)
        except ValueError:
            raise ValueError(
                f"similar.search must be one of {[m.value for m in SearchMode]}, got {self.search!r}"
            ) from None
        if self.approximate_above < 0 or min(self.nlist, self.train_size) < 0:
            raise ValueError("similar.approximate_above, nlist and train_size must be >= 0 (nlist 0 = automatic)")
        if min(self.pq_m, self.nprobe, self.refine) < 1 or not 1 <= self.nbits <= 16:
            raise ValueError("similar.pq_m, nprobe and refine must be >= 1 and similar.nbits in 1..16")

    @property
    def mode(self) -> SearchMode:
        return SearchMode(self.search)

    def cells(self, n: int) -> int:
        """The number of IVF cells for ``n`` vectors: ``nlist``, or a power of two near sqrt(n)."""
        wanted = self.nlist or 2 ** round(math.log2(math.sqrt(max(n, 1))))
        return int(max(1, min(wanted, 65_536, n // 39)))  # k-means wants ~39 training points per cell

    def training_rows(self, n: int, cells: int) -> int:
        return min(n, self.train_size or max(64 * cells, 65_536))

    def tag(self, n: int) -> str:
        """The parameters that shape a trained index, for its file name."""
        cells = self.cells(n)
        return f"ivf{cells}-pq{self.pq_m}x{self.nbits}-t{self.training_rows(n, cells)}"


def import_faiss():  # type: ignore[no-untyped-def]
    # faiss's OpenMP threads spin while they wait by default: on a CPU shared with decoding threads or other
    # jobs that made index training and tests 10-30x slower here. Set OMP_WAIT_POLICY=ACTIVE to keep spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "approximate similarity search needs faiss: pip install faiss-cpu (or the 'ann' extra), "
            "or set similar.search to 'exact'"
        ) from exc
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


class IvfPqIndex:
    """A trained faiss IVF-PQ index over the rows of a float16 unit-vector matrix (row number = faiss id)."""

    def __init__(self, index, nprobe: int) -> None:  # type: ignore[no-untyped-def]
        self.index, self.nprobe = index, nprobe

    @classmethod
    def build(cls, vectors: np.ndarray, config: SimilarConfig) -> IvfPqIndex:
        faiss = import_faiss()
        n, dim = vectors.shape
        if dim % config.pq_m:
            divisors = [m for m in range(4, min(dim, 256) + 1) if dim % m == 0]
            raise ValueError(
                f"similar.pq_m={config.pq_m} does not divide the vector length {dim}: use one of {divisors}"
            )
        cells = config.cells(n)
        rows = np.sort(np.random.default_rng(0).choice(n, config.training_rows(n, cells), replace=False))
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, cells, config.pq_m, config.nbits)
        index.do_polysemous_training = False  # candidates are re-ranked exactly: no use for polysemous codes
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        for start in range(0, n, ADD_BLOCK):
            index.add(np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=np.float32))
        return cls(index, config.nprobe)

    @classmethod
    def read(cls, path: Path, nprobe: int) -> IvfPqIndex:
        return cls(import_faiss().read_index(str(path)), nprobe)

    def write(self, path: Path) -> Path:
        """Write atomically: a reader never sees half an index."""
        tmp = path.with_name(f".{path.name}.tmp")
        import_faiss().write_index(self.index, str(tmp))
        os.replace(tmp, path)
        return path

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def candidates(self, queries: np.ndarray, per_query: int, excluded_rows: np.ndarray) -> np.ndarray:
        """Row numbers (unique, sorted) of up to ``per_query`` approximate neighbours of each unit query,
        never one of ``excluded_rows``."""
        faiss = import_faiss()
        params = faiss.SearchParametersIVF()
        params.nprobe = self.nprobe
        if len(excluded_rows):
            batch = faiss.IDSelectorBatch(np.ascontiguousarray(excluded_rows, dtype=np.int64))
            params.sel = faiss.IDSelectorNot(batch)  # ``batch`` stays referenced until the search returns
        per_query = min(per_query, self.ntotal)
        _, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), per_query, params=params)
        return np.unique(rows[rows >= 0])


def index_file(origin: Path, identity: str, tag: str) -> Path:
    return origin.parent / f"{origin.name}.{identity}-{tag}.faiss"


def open_index(
    vectors: np.ndarray,
    config: SimilarConfig,
    origin: Path | None = None,
    identity: str = "",
    on_build: Callable[[str], None] = log.info,
) -> IvfPqIndex:
    """The trained index of ``vectors``: read from beside ``origin`` (the file or folder they came from,
    whose state ``identity`` names) when one was written, else built and written there (older index files
    of ``origin`` are deleted). Without ``origin`` it is built in memory only."""
    tag = config.tag(len(vectors))
    path = index_file(origin, identity, tag) if origin is not None else None
    if path is not None and path.is_file():
        index = IvfPqIndex.read(path, config.nprobe)
        if index.ntotal == len(vectors):
            return index
        log.warning("%s indexes %d vectors, not %d: rebuilding it", path, index.ntotal, len(vectors))
    on_build(f"building an IVF-PQ index ({tag}) over {len(vectors)} vectors; this is done once per vector file")
    index = IvfPqIndex.build(vectors, config)
    if path is not None:
        try:
            index.write(path)
            for stale in origin.parent.glob(f"{origin.name}.*.faiss"):  # type: ignore[union-attr]
                if stale != path:
                    stale.unlink(missing_ok=True)
        except OSError as exc:  # a read-only folder: the index still serves this process
            log.warning("could not keep the trained index at %s (%s); it will be rebuilt next time", path, exc)
    return index

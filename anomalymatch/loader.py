"""Stream a source as uint8 batches with parallel decoding, collecting every skipped item.

Decoding runs in a thread pool (Pillow, zlib, tifffile and h5py release the GIL for the heavy
work). Work is submitted in small chunks of consecutive items with at most ``4 * workers`` chunks
in flight, so memory stays bounded however large the archive. Batches come out in source order
(minus skipped items) and hold ``batch_size`` images each, except the last. A file that cannot be
read or decoded never stops the job: its id and reason go into a ``SkipReport``.
"""

from __future__ import annotations

import csv
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from anomalymatch.decode import decode_image
from anomalymatch.errors import DecodeError, SourceReadError
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.sources import ImageSource, open_sources
from anomalymatch.transform import to_model_size

T = TypeVar("T")
R = TypeVar("R")
MAX_CHUNK = 32


class SkipReport:
    """Thread-safe list of (id, reason) for images that were not loaded."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, image_id: str, reason: str) -> None:
        with self._lock:
            self._items.append((image_id, reason))

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            self._items.extend(items)

    @property
    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def summary(self, limit: int = 10) -> str:
        """One line of counts per kind of reason, then the first ``limit`` items."""
        items = self.items
        if not items:
            return "no images skipped"
        kinds = Counter(reason.split(":")[0] for _, reason in items)
        lines = [f"{len(items)} skipped:"]
        lines += [f"  {count} x {kind}" for kind, count in kinds.most_common()]
        lines += [f"  - {image_id}: {reason}" for image_id, reason in items[:limit]]
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more (write them all with SkipReport.to_csv)")
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write ``id,reason`` rows (with a header) to ``path``."""
        with Path(path).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "reason"])
            writer.writerows(self.items)


@dataclass
class Batch:
    """Images ``(N, S, S, 3)`` uint8 and their ids, in source order."""

    ids: list[str]
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class LoadResult:
    """Everything that loaded, in source order, plus what was skipped."""

    ids: list[str]
    images: np.ndarray
    report: SkipReport


def default_workers() -> int:
    """One decoding thread per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_threads(workers: int | None) -> int:
    """The ``workers`` setting as a thread count: 0 (or None) = one per CPU, 1 = the calling thread."""
    return default_workers() if not workers else max(1, int(workers))


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``in_flight`` pending calls."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="anomalymatch-decode")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def load_item(source: ImageSource, index: int, spec: PreprocessSpec, draft: bool = True) -> np.ndarray:
    """Read and convert one image to ``(spec.size, spec.size, 3)`` uint8 (raises on failure)."""
    item = source.read_at(index)
    if isinstance(item, np.ndarray):
        return to_model_size(item, spec)
    return decode_image(item, source.ids[index], spec, draft=draft)


class BatchStream(Iterator[Batch]):
    """The iterator ``iter_batches`` returns; ``.report`` holds the skipped items so far."""

    def __init__(
        self,
        source: ImageSource,
        spec: PreprocessSpec,
        batch_size: int,
        workers: int,
        ids: Sequence[str] | None,
        report: SkipReport | None,
        progress: bool = False,
        draft: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.report = report if report is not None else SkipReport()
        self.source, self.spec, self.batch_size = source, spec, batch_size
        self.workers = decode_threads(workers)
        if ids is None:
            self.report.extend(source.unsupported)
            self.indices: list[int] = list(range(len(source)))
        else:
            self.indices = []
            for image_id in ids:
                try:
                    self.indices.append(source.index(image_id))
                except KeyError:
                    self.report.add(image_id, f"id not found in source {source.name}")
        self._progress, self._draft = progress, draft
        self._gen = self._generate()

    def __len__(self) -> int:
        """Number of items that will be attempted (skips make the images fewer)."""
        return len(self.indices)

    def __next__(self) -> Batch:
        return next(self._gen)

    def close(self) -> None:
        """Stop early: cancels queued work and waits for running decodes."""
        self._gen.close()

    def _decode_chunk(self, indices: list[int]) -> list[tuple[int, np.ndarray | None, str]]:
        out: list[tuple[int, np.ndarray | None, str]] = []
        for i in indices:
            try:
                out.append((i, load_item(self.source, i, self.spec, self._draft), ""))
            except (DecodeError, SourceReadError) as exc:
                out.append((i, None, exc.reason))
        return out

    def _generate(self) -> Iterator[Batch]:
        chunk = max(1, min(MAX_CHUNK, self.batch_size // (2 * self.workers)))
        chunks = (self.indices[k : k + chunk] for k in range(0, len(self.indices), chunk))
        bar = _progress_bar(len(self.indices)) if self._progress else None
        size = self.spec.size
        buffer = np.empty((self.batch_size, size, size, 3), dtype=np.uint8)
        batch_ids: list[str] = []
        ids = self.source.ids
        try:
            for results in map_ordered(self._decode_chunk, chunks, self.workers, 4 * self.workers):
                for index, image, reason in results:
                    if image is None:
                        self.report.add(ids[index], reason)
                        continue
                    buffer[len(batch_ids)] = image
                    batch_ids.append(ids[index])
                    if len(batch_ids) == self.batch_size:
                        yield Batch(batch_ids, buffer)
                        buffer = np.empty_like(buffer)
                        batch_ids = []
                if bar is not None:
                    bar.update(len(results))
            if batch_ids:
                yield Batch(batch_ids, buffer[: len(batch_ids)].copy())
        finally:
            if bar is not None:
                bar.close()


def _progress_bar(total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="decoding")


def iter_batches(
    source: ImageSource,
    spec: PreprocessSpec,
    batch_size: int = 256,
    workers: int = 0,
    ids: Sequence[str] | None = None,
    report: SkipReport | None = None,
    progress: bool = False,
    draft: bool = True,
) -> BatchStream:
    """Stream ``source`` (or the given ``ids`` of it, in that order) as ``Batch`` objects.

    Failed items, unknown ids and (for a full pass) the source's unsupported entries go to
    ``report`` (a fresh ``SkipReport`` if None, reachable as ``.report`` on the returned iterator).
    ``workers``: decoding threads, as the config's ``workers`` (0: one per CPU; 1: the calling thread).
    ``draft=False`` turns off the JPEG DCT-domain fast path (for comparisons).
    """
    return BatchStream(source, spec, batch_size, workers, ids, report, progress, draft)


def load_images(
    source: ImageSource | str | os.PathLike | Sequence[str | os.PathLike],
    spec: PreprocessSpec,
    ids: Sequence[str] | None = None,
    workers: int = 0,
    progress: bool = False,
) -> LoadResult:
    """Decode a whole source (or ``ids`` of it) into one preallocated ``(N, S, S, 3)`` uint8 array.

    For pools that fit in memory; paths are opened (and closed again) for you.
    """
    owned = not isinstance(source, ImageSource)
    src = open_sources([source] if isinstance(source, (str, os.PathLike)) else source) if owned else source
    try:
        stream = iter_batches(src, spec, workers=workers, ids=ids, progress=progress)
        images = np.empty((len(stream), spec.size, spec.size, 3), dtype=np.uint8)
        out_ids: list[str] = []
        for batch in stream:
            images[len(out_ids) : len(out_ids) + len(batch)] = batch.images
            out_ids.extend(batch.ids)
        return LoadResult(out_ids, images[: len(out_ids)], stream.report)
    finally:
        if owned:
            src.close()

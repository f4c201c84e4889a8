"""Bulk scoring on a Ray cluster (Ray Data), into the same output folder as ``serving.bulk``.

The job is the local engine's job spread over machines; only ``run()`` differs. The output folder
(Parquet shards, ``manifest.json``, ``top.csv``, ``errors.csv``) has the same format, written by the
same code (``BulkJob._commit``, ``_write_reports``), so ``read_scores``, the reports and ``bulk_status``
work unchanged, and a folder started by one engine can be resumed by the other.

Pipeline::

    partitions (source k, entries [start, end))       one block each, from the per-source cursors
      -> decode: CPU tasks, one per partition          read + decode + resize, yields uint8 sub-batches;
                                                       a failed entry is a row with its reason
      -> score: an actor pool of ONNX Runtime sessions num_gpus=1 and CUDA where the cluster has GPUs,
                                                       else CPU actors; batch size per provider
      -> driver: rows grouped by partition             a partition is complete when every one of its
                                                       entries came back (scored or failed)

Exactly once: the driver commits a partition (one shard) only when it is complete and every earlier
partition of its source is committed, so each source's cursor in the manifest still means "everything
before it is scored or reported". A row that arrives twice (a retried task) is dropped by its entry index.
A worker node lost mid-job: Ray retries its tasks and restarts its actors; if the dataset fails anyway,
the driver reruns only the partitions not yet complete (``max_attempts``). A driver killed: rerun the
command; it resumes from the cursors, files that no manifest names are deleted, as in the local engine.

Pinned model: the driver resolves the model once and ships its bytes to every actor through the object
store (workers need no registry access or shared model path); the manifest refuses another version.
Sources are listed once, on the driver, and shipped the same way, so every worker reads the listing the
manifest counted. ``ray`` is imported only here, and only when a job runs: ``pip install 'anomalymatch[ray]'``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from serving.bulk import BulkJob, BulkProgress, _Manifest

MIN_PARTITION_ROWS = 256
log = logging.getLogger(__name__)


class Engine(str, Enum):
    """Where a bulk job runs: in this process (``local``) or on a Ray cluster (``ray``)."""

    LOCAL = "local"
    RAY = "ray"

    @classmethod
    def parse(cls, value: str | Engine) -> Engine:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown engine {value!r}: use one of {[e.value for e in cls]}") from None


def import_ray():  # type: ignore[no-untyped-def]
    """``ray`` with Ray Data, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the ray engine needs Ray Data: pip install 'anomalymatch[ray]' (or run with --engine local)"
        ) from exc
    return ray


@dataclass(frozen=True)
class Partition:
    """Entries ``[start, end)`` of source ``source`` (its position in the job's source list)."""

    id: int
    source: int
    start: int
    end: int


def plan_partitions(cursors: Sequence[tuple[int, int]], rows: int) -> list[Partition]:
    """Partitions of at most ``rows`` entries over each source's ``(next_index, count)``."""
    if rows < 1:
        raise ValueError(f"partition rows must be >= 1, got {rows}")
    out: list[Partition] = []
    for k, (start, count) in enumerate(cursors):
        for lo in range(start, count, rows):
            out.append(Partition(len(out), k, lo, min(lo + rows, count)))
    return out


def partition_rows_for(remaining: int, cpus: int, shard_rows: int) -> int:
    """About four partitions per CPU of the cluster (so work spreads and a lost one costs little), each
    between ``MIN_PARTITION_ROWS`` and ``shard_rows`` entries (one shard per partition)."""
    per_cpu = math.ceil(remaining / max(1, 4 * cpus))
    return max(1, min(shard_rows, max(MIN_PARTITION_ROWS, per_cpu)))


# -- the two pipeline stages (run in Ray workers) -----------------------------------------------------------
_SOURCES: dict[str, Any] = {}  # per worker process: the sources shipped by the driver, by object id


def _shipped_source(ref: Any) -> Any:
    key = ref.hex()
    if key not in _SOURCES:
        import ray

        _SOURCES[key] = ray.get(ref)
    return _SOURCES[key]


def decode_partition(batch: dict[str, np.ndarray], sources: list, spec_json: str, rows: int) -> Iterator[dict]:
    """One partition row in, its entries out as sub-batches of ``rows``: uint8 images, or a zero image and
    the reason the entry failed (``error``), tagged with the partition and the entry index."""
    from anomalymatch.errors import DecodeError, SourceReadError
    from anomalymatch.loader import load_item
    from anomalymatch.preprocessing import PreprocessSpec

    spec = PreprocessSpec.from_json(spec_json)
    size = spec.size
    for part, k, start, end in zip(batch["partition"], batch["source"], batch["start"], batch["end"]):
        source = _shipped_source(sources[int(k)])
        for lo in range(int(start), int(end), rows):
            hi = min(lo + rows, int(end))
            images = np.zeros((hi - lo, size, size, 3), np.uint8)
            errors = [""] * (hi - lo)
            for j, i in enumerate(range(lo, hi)):
                try:
                    images[j] = load_item(source, i, spec)
                except (DecodeError, SourceReadError) as exc:
                    errors[j] = exc.reason or "unreadable"
            yield {
                "partition": np.full(hi - lo, int(part), np.int64),
                "index": np.arange(lo, hi, dtype=np.int64),
                "id": np.array(source.ids[lo:hi], dtype=object),
                "error": np.array(errors, dtype=object),
                "image": images,
            }


class ScoreActor:
    """One ONNX Runtime session per actor over the job's model bytes; scores the rows that decoded, in
    ONNX Runtime batches of ``batch_size`` (0: the provider's own, ``OnnxScorer.default_batch_size``)."""

    def __init__(self, model: Any, providers: Sequence[str], threads: int, batch_size: int) -> None:
        from anomalymatch.scoring import OnnxScorer

        if not isinstance(model, bytes):  # an ObjectRef to the bytes
            import ray

            model = ray.get(model)
        self._dir = tempfile.TemporaryDirectory(prefix="anomalymatch-model-")
        path = Path(self._dir.name) / "model.onnx"
        path.write_bytes(model)
        self.scorer = OnnxScorer(path, providers=list(providers), threads=threads, spinning=False)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        scores = np.full(len(ok), np.nan, np.float32)
        if ok.any():
            scores[ok] = self.scorer.score(np.ascontiguousarray(batch["image"][ok]), self.batch_size)
        return {k: batch[k] for k in ("partition", "index", "id", "error")} | {"score": scores}


# -- the driver ---------------------------------------------------------------------------------------------
@dataclass
class _Pending:
    """What came back for one partition so far, by entry index; emptied once committed."""

    part: Partition
    ids: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    committed: bool = False

    @property
    def complete(self) -> bool:
        return self.committed or len(self.ids) == self.part.end - self.part.start

    def add(self, index: int, image_id: str, error: str, score: float) -> bool:
        if self.committed or index in self.ids:
            return False  # a retried task's second copy
        self.ids[index] = image_id
        if error:
            self.errors[index] = error
        else:
            self.scores[index] = score
        return True

    def rows(self) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        """Scored ids, their scores and (id, reason) of the failed entries, in entry order."""
        order = range(self.part.start, self.part.end)
        ids = [self.ids[i] for i in order if i in self.scores]
        scores = np.array([self.scores[i] for i in order if i in self.scores], np.float32)
        return ids, scores, [(self.ids[i], self.errors[i]) for i in order if i in self.errors]

    def release(self) -> None:
        self.committed = True
        self.ids, self.scores, self.errors = {}, {}, {}


@dataclass(frozen=True)
class RayOptions:
    """How a job uses the cluster. ``address``: None = ``RAY_ADDRESS`` or a new local Ray instance;
    ``auto`` = the cluster this machine belongs to; ``HOST:PORT`` = that cluster's head.
    ``actors``: scoring actors (0 = one per GPU, else one per two CPUs); ``actor_threads``: ONNX Runtime
    threads per CPU actor; ``batch_size``: images per actor call and per ONNX Runtime run (0 = calls of
    1024 on GPU, 256 on CPU, run in the provider's batches: ``OnnxScorer.default_batch_size``);
    ``partition_rows``: entries per partition (0 = about four per cluster CPU, at most ``shard_rows``)."""

    address: str | None = None
    actors: int = 0
    actor_threads: int = 1
    batch_size: int = 0
    partition_rows: int = 0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if min(self.actors, self.batch_size, self.partition_rows) < 0 or self.actor_threads < 1:
            raise ValueError("ray options: actors, batch_size, partition_rows >= 0 and actor_threads >= 1")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


class RayBulkJob(BulkJob):
    """``BulkJob`` whose ``run()`` decodes and scores on a Ray cluster; the same output folder, manifest,
    resumption and reports. ``model_path``: the resolved ONNX file (shipped to the actors as bytes);
    ``job_options``: other ``BulkJob`` options for the reports (e.g. ``catalogue``)."""

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        out_dir: str | os.PathLike,
        model_path: str | os.PathLike,
        model_version: str,
        *,
        ray_options: RayOptions = RayOptions(),
        shard_rows: int = 65_536,
        top_n: int = 1000,
        on_commit: Callable[[BulkProgress], None] | None = None,
        progress_bar: bool = False,
        roots: Sequence[str | os.PathLike] | None = None,
        **job_options: Any,
    ) -> None:
        if job_options.get("embeddings"):
            raise ValueError("the ray engine stores scores only: score with --engine local for --embeddings")
        import_ray()
        from anomalymatch.scoring import OnnxScorer

        self.model_path = Path(model_path)
        scorer = OnnxScorer(self.model_path, providers=["CPUExecutionProvider"], threads=1)  # the spec, checked
        super().__init__(
            sources,
            out_dir,
            scorer,
            model_version,
            shard_rows=shard_rows,
            top_n=top_n,
            on_commit=on_commit,
            progress_bar=progress_bar,
            roots=roots,
            **job_options,
        )
        self.options = ray_options
        self.providers: list[str] = []  # what the actors were asked to use (set by run)

    def run(self) -> BulkProgress:
        """Score every entry not yet committed on the cluster; returns the final progress."""
        import_ray()  # a missing Ray is said before anything is written
        return super().run()

    def _score_sources(self, m: _Manifest, opened: list) -> None:  # type: ignore[type-arg]
        ray = import_ray()
        for k, source in enumerate(opened):  # nothing to decode: commit its unsupported entries now
            if not m.sources[k].finished and len(source) == 0:
                self._commit(m, k, 0, [], [], list(source.unsupported), finished=True)
        owns_ray = not ray.is_initialized()
        if owns_ray:
            ray.init(address=self.options.address, log_to_driver=False, configure_logging=False)
        try:
            self._run_cluster(ray, m, opened)
        finally:
            if owns_ray and ray.is_initialized():
                ray.shutdown()

    def _run_cluster(self, ray: Any, m: _Manifest, opened: list) -> None:  # type: ignore[type-arg]
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        cursors = [(0, 0) if s.finished else (s.next_index, s.count) for s in m.sources]
        remaining = sum(count - start for start, count in cursors)
        rows = self.options.partition_rows or partition_rows_for(remaining, cpus, self.shard_rows)
        parts = plan_partitions(cursors, rows)
        pending = {p.id: _Pending(p) for p in parts}
        queues: list[list[_Pending]] = [[pending[p.id] for p in parts if p.source == k] for k in range(len(opened))]
        source_refs = [ray.put(s) for s in opened]
        model_ref = ray.put(self.model_path.read_bytes())
        bar = _progress_bar(remaining) if self.progress_bar else None
        started, received, last_error = time.monotonic(), 0, None
        try:
            for attempt in range(1, self.options.max_attempts + 1):
                todo = [p for p in parts if not pending[p.id].complete]
                if not todo or self._cancel.is_set():
                    break
                try:
                    for batch in self._stream(ray, todo, source_refs, model_ref, gpus, cpus):
                        new = self._collect(batch, pending)
                        received += new
                        if bar is not None:
                            bar.update(new)
                        elapsed = time.monotonic() - started
                        m.progress.seconds = elapsed
                        m.progress.images_per_second = received / max(elapsed, 1e-9)
                        self._commit_ready(m, queues, opened)
                        if self._cancel.is_set():
                            break
                except (ray.exceptions.RayError, ray.data.exceptions.SystemException) as exc:
                    if isinstance(exc, ray.data.exceptions.UserCodeException):
                        raise  # a bug or bad input, not a lost node: running again would fail the same way
                    log.warning("ray job attempt %d of %d failed: %s", attempt, self.options.max_attempts, exc)
                    last_error = exc
            self._commit_ready(m, queues, opened)
        finally:
            if bar is not None:
                bar.close()
        missing = sum(1 for q in queues for got in q if not got.complete)
        if missing and not self._cancel.is_set():
            raise RuntimeError(
                f"{missing} partitions did not complete after {self.options.max_attempts} attempts "
                f"({type(last_error).__name__}: {last_error}); what was committed stays: fix the cluster and "
                "rerun the same command to resume"
            )

    def _stream(self, ray: Any, todo: list[Partition], source_refs: list, model_ref: Any, gpus: int, cpus: int):  # type: ignore[no-untyped-def]
        """The Ray Data pipeline over ``todo``, as numpy batches of (partition, index, id, error, score)."""
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        opts = self.options
        if gpus:
            providers, actor_args = ["CUDAExecutionProvider", "CPUExecutionProvider"], {"num_gpus": 1}
            actors, threads, batch_size = opts.actors or gpus, 0, opts.batch_size or 1024
        else:
            providers, actor_args = ["CPUExecutionProvider"], {"num_cpus": opts.actor_threads}
            actors, threads = opts.actors or max(1, cpus // 2), opts.actor_threads
            batch_size = opts.batch_size or 256
        self.providers = providers
        items = [{"partition": p.id, "source": p.source, "start": p.start, "end": p.end} for p in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            decode_partition,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"sources": source_refs, "spec_json": self.scorer.spec.to_json(), "rows": batch_size},
            num_cpus=1,
            # sub-batches in flight (measured: 115 MB at 64 px, 152 MB at 224 px); a memory request of its own
            # also keeps decoding in CPU tasks rather
            # than fused into the scoring actors' processes (Ray Data fuses stages whose requests are equal)
            memory=4 * batch_size * self.scorer.spec.size**2 * 3 + 128 * 1024**2,
        )
        ds = ds.map_batches(
            ScoreActor,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                "model": model_ref,
                "providers": providers,
                "threads": threads,
                "batch_size": opts.batch_size,  # 0: the provider's own
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            **actor_args,
        )
        return ds.iter_batches(batch_size=None, batch_format="numpy")

    @staticmethod
    def _collect(batch: dict[str, np.ndarray], pending: dict[int, _Pending]) -> int:
        new = 0
        for part, index, image_id, error, score in zip(
            batch["partition"], batch["index"], batch["id"], batch["error"], batch["score"]
        ):
            new += pending[int(part)].add(int(index), str(image_id), str(error), float(score))
        return new

    def _commit_ready(self, m: _Manifest, queues: list[list[_Pending]], opened: list) -> None:  # type: ignore[type-arg]
        """Commit, source by source in entry order, every complete partition whose predecessors are committed."""
        for k, queue in enumerate(queues):
            while queue and queue[0].complete:
                got = queue.pop(0)
                p = got.part
                assert m.sources[k].next_index == p.start, "partitions commit in entry order"
                ids, scores, errors = got.rows()
                if p.start == 0:
                    errors = list(opened[k].unsupported) + errors  # as the local engine's first shard
                self._commit(m, k, p.end, ids, [scores], errors, finished=p.end == m.sources[k].count)
                got.release()


def _progress_bar(total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="scoring on ray")

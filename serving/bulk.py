"""Resumable bulk scoring: sources -> append-only Parquet shards + manifest, top-N, error report.

Output folder::

    manifest.json          job, model version, per-source cursor, committed shards, status, progress
    shards/part-00000.parquet   id, score (float32), model_version, source[, embedding]; append-only
    shards/part-00000.errors.csv  id, source, reason for the images of that shard's range that failed
    errors.csv             every failed or unsupported entry (written when the job ends)
    top.csv                the top-N candidates by score (written when the job ends), with the survey
                           catalogue's columns and sky-viewer links when one is given (``serving.bulk_top``)

Each source is read in its own order; decoding runs in a thread pool ahead of inference
(``anomalymatch.loader.iter_batches``), so the two overlap. Every ``shard_rows`` scored images a shard
is committed: the Parquet and error files are written under temporary names and renamed, then the
manifest (with the source's cursor: everything before it is scored or reported) is replaced
atomically. A job killed at any point restarts from the last committed cursor; files that no
manifest names (a shard renamed just before a kill) are deleted first. So every image ends up in
exactly one shard row or one error row. The job is pinned to one model version: resuming with another
is refused.

With ``embeddings=True`` each row also holds the image's pooled features (the model's ``embedding``
output, computed in the same pass as the score) as a fixed-size list of float16; the manifest records
the choice and a resume with the other choice is refused. ``serving.bulk_embeddings`` reads them back
(ids + an (N, D) matrix) and ``EmbeddingSet.load(out_dir)`` searches them.
"""

from __future__ import annotations

import csv
import heapq
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anomalymatch.loader import SkipReport, iter_batches
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.sources import open_source
from serving.bulk_top import Catalogue, write_top_csv

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SCORE_COLUMNS = ["id", "score", "model_version", "source"]
EMBEDDING_COLUMN = "embedding"


class Scorer(Protocol):
    spec: PreprocessSpec

    def score(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


class JobMismatch(ValueError):
    """The output folder holds a job for other sources, another model version or spec."""


class NoEmbeddingOutput(JobMismatch):
    """Embeddings were asked for but the model has no embedding output."""


def check_embeddings(scorer: Scorer, model_version: str) -> None:
    """``NoEmbeddingOutput`` unless ``scorer`` can give features with its scores."""
    if getattr(scorer, "embedding_output", "") is None or not hasattr(scorer, "score_and_embed"):
        raise NoEmbeddingOutput(
            f"embeddings need a model with an 'embedding' output; version {model_version} has none (it was "
            "exported before embeddings were): a retrain registers a version that has it, or score without them"
        )


@dataclass
class BulkProgress:
    """Where a job stands; also what ``manifest.json`` holds besides the shard list."""

    status: str = "running"  # running | done | cancelled | failed
    total: int = 0
    scored: int = 0
    skipped: int = 0
    images_per_second: float = 0.0
    seconds: float = 0.0
    error: str = ""

    @property
    def done(self) -> int:
        return self.scored + self.skipped


@dataclass
class _SourceState:
    path: str
    count: int
    next_index: int = 0
    finished: bool = False


@dataclass
class _Manifest:
    model_version: str
    spec: dict
    sources: list[_SourceState]
    shards: list[dict] = field(default_factory=list)
    progress: BulkProgress = field(default_factory=BulkProgress)
    top_n: int = 0
    format: int = FORMAT_VERSION
    embeddings: bool = False
    precision: str = "fp32"  # of the model file that scores it: a job never mixes fp32 and fp16 rows

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=1)

    @classmethod
    def load(cls, path: Path) -> _Manifest:
        d = json.loads(path.read_text())
        return cls(
            d["model_version"],
            d["spec"],
            [_SourceState(**s) for s in d["sources"]],
            d["shards"],
            BulkProgress(**d["progress"]),
            d.get("top_n", 0),
            d.get("format", FORMAT_VERSION),
            d.get("embeddings", False),
            d.get("precision", "fp32"),
        )


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a bulk job folder as a dict (``progress``, ``shards``, ``sources``...)."""
    return json.loads((Path(out_dir) / MANIFEST).read_text())


def read_scores(out_dir: str | os.PathLike):  # type: ignore[no-untyped-def]
    """All committed rows of a job as one ``pyarrow.Table`` (id, score, model_version, source); the
    embeddings of a job that stored them are read by ``serving.bulk_embeddings.read_embeddings``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = _Manifest.load(Path(out_dir) / MANIFEST)
    tables = [
        pq.read_table(Path(out_dir) / shard["file"], columns=SCORE_COLUMNS)
        for shard in manifest.shards
        if shard["rows"]
    ]
    return pa.concat_tables(tables) if tables else _empty_table()


def _empty_table():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.table(
        {
            "id": pa.array([], pa.string()),
            "score": pa.array([], pa.float32()),
            "model_version": pa.array([], pa.string()),
            "source": pa.array([], pa.string()),
        }
    )


class BulkJob:
    """One bulk scoring job into ``out_dir``; ``run()`` starts or resumes it, ``cancel()`` stops it
    at the next batch (what was scored is committed), ``progress`` can be read from any thread.
    ``embeddings``: store each image's features too (the scorer needs ``score_and_embed``);
    ``catalogue``: add its columns to top.csv (``serving.bulk_top``)."""

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        out_dir: str | os.PathLike,
        scorer: Scorer,
        model_version: str,
        *,
        batch_size: int = 256,
        workers: int = 0,
        shard_rows: int = 65_536,
        top_n: int = 1000,
        on_commit: Callable[[BulkProgress], None] | None = None,
        progress_bar: bool = False,
        roots: Sequence[str | os.PathLike] | None = None,
        embeddings: bool = False,
        catalogue: Catalogue | None = None,
    ) -> None:
        if not sources:
            raise ValueError("no sources given: pass folders, zips, HDF5 files or image files")
        self.sources = [str(Path(s).expanduser().resolve()) for s in sources]
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("a source is given twice; every image must be scored exactly once")
        self.out_dir = Path(out_dir)
        self.scorer, self.model_version = scorer, str(model_version)
        self.batch_size, self.workers, self.shard_rows, self.top_n = batch_size, workers, shard_rows, top_n
        self.on_commit, self.progress_bar = on_commit, progress_bar
        self.roots = None if roots is None else [str(r) for r in roots]  # entries outside: errors.csv, never read
        self.embeddings, self.catalogue = embeddings, catalogue
        self._cancel = threading.Event()
        self.progress = BulkProgress(status="queued")

    def cancel(self) -> None:
        self._cancel.set()

    # -- manifest -----------------------------------------------------------------------------
    def _open_manifest(self, counts: list[int]) -> _Manifest:
        path = self.out_dir / MANIFEST
        spec = self.scorer.spec.to_dict()
        precision = getattr(self.scorer, "precision", "fp32")
        if not path.is_file():
            states = [_SourceState(p, n) for p, n in zip(self.sources, counts)]
            return _Manifest(
                self.model_version, spec, states, top_n=self.top_n, embeddings=self.embeddings, precision=precision
            )
        m = _Manifest.load(path)
        where = f"{self.out_dir} holds a bulk job"
        if [s.path for s in m.sources] != self.sources:
            raise JobMismatch(
                f"{where} over other sources ({[s.path for s in m.sources]}): pass the same "
                "sources to resume, or a new --out folder"
            )
        if [s.count for s in m.sources] != counts:
            raise JobMismatch(
                f"{where} whose sources held {[s.count for s in m.sources]} images, now {counts}: "
                "the sources changed; score into a new --out folder"
            )
        if m.model_version != self.model_version or m.spec != spec:
            raise JobMismatch(
                f"{where} scored by model version {m.model_version}; resume it with that version "
                f"(--model {m.model_version}) or use a new --out folder for version {self.model_version}"
            )
        if m.embeddings != self.embeddings:
            said = "with" if m.embeddings else "without"
            raise JobMismatch(
                f"{where} started {said} embeddings; resume it {said} --embeddings (every shard of a job holds "
                "the same columns), or use a new --out folder"
            )
        if m.precision != precision:
            raise JobMismatch(
                f"{where} scored by the {m.precision} model file; resume it with --precision {m.precision} "
                "(one job never mixes fp32 and fp16 scores), or use a new --out folder"
            )
        return m

    def _remove_orphans(self, m: _Manifest) -> None:
        named = {Path(s["file"]).name for s in m.shards} | {Path(s["errors"]).name for s in m.shards if s["errors"]}
        for path in (self.out_dir / "shards").iterdir():
            if path.name not in named:
                path.unlink()

    def _commit(
        self,
        m: _Manifest,
        src: int,
        cursor: int,
        ids: list[str],
        scores: list[np.ndarray],
        errors: list[tuple[str, str]],
        finished: bool = False,
        features: list[np.ndarray] | None = None,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        k = len(m.shards)
        shard = self.out_dir / "shards" / f"part-{k:05d}.parquet"
        error_file = shard.with_name(f"part-{k:05d}.errors.csv")
        source = m.sources[src].path
        if ids:
            values = np.concatenate(scores).astype(np.float32)
            columns = {
                "id": pa.array(ids, pa.string()),
                "score": pa.array(values, pa.float32()),
                "model_version": pa.array([self.model_version] * len(ids), pa.string()),
                "source": pa.array([source] * len(ids), pa.string()),
            }
            if features:
                matrix = np.concatenate(features).astype(np.float16)
                assert len(matrix) == len(ids), "one feature row per scored image"
                flat = pa.array(matrix.reshape(-1), pa.float16())
                columns[EMBEDDING_COLUMN] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
            table = pa.table(columns)
            _atomic_write(shard, lambda p: pq.write_table(table, p))
        if errors:

            def write_errors(p: Path) -> None:
                with p.open("w", newline="", encoding="utf-8") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(["id", "source", "reason"])
                    writer.writerows((i, source, r) for i, r in errors)

            _atomic_write(error_file, write_errors)
        m.shards.append(
            {
                "file": f"shards/{shard.name}" if ids else "",
                "errors": f"shards/{error_file.name}" if errors else "",
                "rows": len(ids),
                "n_errors": len(errors),
                "source": src,
                "start": m.sources[src].next_index,
                "end": cursor,
            }
        )
        m.sources[src].next_index = cursor
        m.sources[src].finished = finished
        m.progress.scored += len(ids)
        m.progress.skipped += len(errors)
        self._save(m)
        if self.on_commit is not None:
            self.on_commit(m.progress)

    def _save(self, m: _Manifest) -> None:
        _atomic_write(self.out_dir / MANIFEST, lambda p: p.write_text(m.to_json()))

    # -- the job ------------------------------------------------------------------------------
    def run(self) -> BulkProgress:
        """Score every image not yet committed; returns the final progress (status done or cancelled)."""
        if self._cancel.is_set():
            self.progress.status = "cancelled"
            return self.progress
        if self.embeddings:
            try:
                check_embeddings(self.scorer, self.model_version)  # before anything is written
            except NoEmbeddingOutput as exc:
                self.progress.status, self.progress.error = "failed", str(exc)
                raise
        (self.out_dir / "shards").mkdir(parents=True, exist_ok=True)
        opened = [open_source(p, roots=self.roots) for p in self.sources]
        try:
            m = self._open_manifest([len(s) for s in opened])
            self._remove_orphans(m)
            m.progress.total = sum(len(s) + len(s.unsupported) for s in opened)
            m.progress.status, m.progress.error = "running", ""
            self.progress = m.progress
            self._save(m)
            self._score_sources(m, opened)
            cancelled = self._cancel.is_set()
            if not cancelled:
                self._write_reports(m)  # before "done": a poller that sees done finds top.csv and errors.csv
            m.progress.status = "cancelled" if cancelled else "done"
            self._save(m)
            return m.progress
        except BaseException as exc:
            self.progress.status, self.progress.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for s in opened:
                s.close()

    def _score_sources(self, m: _Manifest, opened: list) -> None:  # type: ignore[type-arg]
        """Score every source's uncommitted entries, committing as it goes (the engine's part of ``run``)."""
        started, done_before = time.monotonic(), m.progress.scored
        for k, source in enumerate(opened):
            self._run_source(m, k, source, started, done_before)
            if self._cancel.is_set():
                break

    def _run_source(self, m: _Manifest, k: int, source, started: float, done_before: int) -> None:  # type: ignore[no-untyped-def]
        state = m.sources[k]
        if state.finished:
            return
        report = SkipReport()
        ids = None if state.next_index == 0 else source.ids[state.next_index :]
        stream = iter_batches(
            source, self.scorer.spec, self.batch_size, self.workers, ids=ids, report=report, progress=self.progress_bar
        )
        pending_ids: list[str] = []
        pending_scores: list[np.ndarray] = []
        pending_features: list[np.ndarray] = []
        reported = 0
        cursor = state.next_index
        try:
            for batch in stream:
                if self.embeddings:
                    scores, features = self.scorer.score_and_embed(batch.images, self.batch_size)  # type: ignore[attr-defined]
                    pending_features.append(features)
                else:
                    scores = self.scorer.score(batch.images, self.batch_size)
                pending_scores.append(scores)
                pending_ids.extend(batch.ids)
                cursor = source.index(batch.ids[-1]) + 1
                elapsed = time.monotonic() - started
                m.progress.seconds = elapsed
                m.progress.images_per_second = (m.progress.scored + len(pending_ids) - done_before) / max(elapsed, 1e-9)
                if len(pending_ids) >= self.shard_rows or self._cancel.is_set():
                    errors = report.items[reported:]
                    reported += len(errors)
                    self._commit(m, k, cursor, pending_ids, pending_scores, errors, features=pending_features)
                    pending_ids, pending_scores, pending_features = [], [], []
                    if self._cancel.is_set():
                        return
        finally:
            stream.close()
        errors = report.items[reported:]
        self._commit(m, k, len(source), pending_ids, pending_scores, errors, finished=True, features=pending_features)

    def _write_reports(self, m: _Manifest) -> None:
        """errors.csv (every failed entry) and top.csv (the top-N by score) from the committed shards."""
        import pyarrow.parquet as pq

        def write_errors(p: Path) -> None:
            with p.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(["id", "source", "reason"])
                for shard in m.shards:
                    if shard["errors"]:
                        with (self.out_dir / shard["errors"]).open(newline="", encoding="utf-8") as fh:
                            rows = csv.reader(fh)
                            next(rows)
                            writer.writerows(rows)

        _atomic_write(self.out_dir / "errors.csv", write_errors)
        best: list[tuple[float, str, str]] = []
        for shard in m.shards:
            if not shard["rows"] or not m.top_n:
                continue
            table = pq.read_table(self.out_dir / shard["file"], columns=["id", "score", "source"])
            scores = table["score"].to_numpy()
            keep = np.argsort(-scores, kind="stable")[: m.top_n]
            ids, sources = table["id"].to_pylist(), table["source"].to_pylist()
            for i in keep:
                item = (float(scores[i]), ids[i], sources[i])
                if len(best) < m.top_n:
                    heapq.heappush(best, item)
                else:
                    heapq.heappushpop(best, item)
        ranked = sorted(best, key=lambda t: (-t[0], t[2], t[1]))
        _atomic_write(self.out_dir / "top.csv", lambda p: write_top_csv(p, ranked, m.model_version, self.catalogue))

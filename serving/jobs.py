"""Bulk jobs submitted to the service: server-side sources under the configured data roots only.

Jobs run one at a time on a background thread (inference already uses every core), each into
``<out_root>/<job_id>/`` with ``serving.bulk.BulkJob``, or with ``engine="ray"`` on a Ray cluster
(``serving.ray_engine.RayBulkJob``: the cluster at ``ray_address``, default ``$RAY_ADDRESS`` or a new local
Ray instance; the same output folder, so status, resume and reports do not depend on the engine).
Submitting an existing job id resumes it (with either engine), with the same sources and model version
only (else 409). Jobs are known from their folders' manifests, so after a restart ``status`` and
``list_jobs`` report them (a job that was running when the service stopped is "interrupted": resubmit it
to resume). ``status`` adds ``eta_s``, the seconds left at the current rate.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from serving.bulk import MANIFEST, BulkJob, NoEmbeddingOutput, check_embeddings, read_manifest
from serving.bulk_top import Catalogue
from serving.live_model import LoadedModel
from serving.ray_engine import Engine
from serving.uploads import RequestError

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_under_roots(path: str, roots: Sequence[str]) -> str:
    """The resolved path if it lies under one of ``roots`` (symlinks resolved), else ``RequestError(403)``."""
    if not roots:
        raise RequestError(403, "bulk jobs are disabled: the service has no data roots (set serving.data_roots)")
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).expanduser().resolve()):
            if not resolved.exists():
                raise RequestError(404, f"source not found: {path}")
            return str(resolved)
    raise RequestError(
        403, f"source {path} is outside the service's data roots {list(roots)}; only sources under them can be scored"
    )


class BulkJobs:
    def __init__(
        self,
        out_root: str | os.PathLike,
        data_roots: Sequence[str],
        batch_size: int,
        workers: int,
        shard_rows: int,
        default_top_n: int,
        ray_address: str | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.out_root = Path(out_root)
        self.catalogue = catalogue  # the label store's attached catalogue: its columns go into top.csv
        self.ray_address = ray_address
        self.data_roots = list(data_roots)
        self.batch_size, self.workers, self.shard_rows, self.default_top_n = (
            batch_size,
            workers,
            shard_rows,
            default_top_n,
        )
        self._jobs: dict[str, BulkJob] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anomalymatch-bulk")

    def submit(
        self,
        sources: Sequence[str],
        model: LoadedModel,
        top_n: int | None = None,
        job_id: str = "",
        engine: str = "local",
        embeddings: bool = False,
    ) -> dict:
        try:
            chosen = Engine.parse(engine)
        except ValueError as exc:
            raise RequestError(400, f"{exc}: local runs in the service's process, ray on a Ray cluster") from exc
        if not sources:
            raise RequestError(
                400, "no sources: pass server-side folders, zips, HDF5 or image files under the data roots"
            )
        resolved = [check_under_roots(s, self.data_roots) for s in sources]
        job_id = job_id or uuid.uuid4().hex[:12]
        if not _JOB_ID.match(job_id):
            raise RequestError(400, f"job_id {job_id!r}: use 1-64 letters, digits, '-' or '_'")
        if embeddings:
            if chosen is Engine.RAY:
                raise RequestError(400, "embeddings are stored by the local engine: drop engine or embeddings")
            try:
                check_embeddings(model.scorer, model.version)
            except NoEmbeddingOutput as exc:
                raise RequestError(422, str(exc)) from None
        with self._lock:
            running = self._jobs.get(job_id)
            if running is not None and running.progress.status in ("queued", "running"):
                raise RequestError(409, f"job {job_id} is already {running.progress.status}")
            self._check_resumable(job_id, resolved, model.version, embeddings)
            top_n = self.default_top_n if top_n is None else top_n
            job = (
                self._ray_job(resolved, job_id, model, top_n)
                if chosen is Engine.RAY
                else self._local_job(resolved, job_id, model, top_n, embeddings)
            )
            self._jobs[job_id] = job
        self._pool.submit(self._run, job_id, job)
        return {
            "job_id": job_id,
            "status": job.progress.status,
            "model_version": model.version,
            "out_dir": str(job.out_dir),
        }

    def _local_job(
        self, sources: list[str], job_id: str, model: LoadedModel, top_n: int, embeddings: bool = False
    ) -> BulkJob:
        return BulkJob(
            sources,
            self.out_root / job_id,
            model.scorer,
            model.version,
            batch_size=self.batch_size,
            workers=self.workers,
            shard_rows=self.shard_rows,
            top_n=top_n,
            roots=self.data_roots,
            embeddings=embeddings,
            catalogue=self.catalogue,
        )

    def _ray_job(self, sources: list[str], job_id: str, model: LoadedModel, top_n: int) -> BulkJob:
        from serving.ray_engine import RayBulkJob, RayOptions

        try:
            return RayBulkJob(
                sources,
                self.out_root / job_id,
                model.path,
                model.version,
                ray_options=RayOptions(address=self.ray_address),
                shard_rows=self.shard_rows,
                top_n=top_n,
                roots=self.data_roots,
                catalogue=self.catalogue,
            )
        except ImportError as exc:
            raise RequestError(501, f"{exc} on the service's machine") from exc

    def _check_resumable(self, job_id: str, sources: list[str], version: str, embeddings: bool = False) -> None:
        """An existing job id resumes only over the same sources with the same model version and
        embeddings choice."""
        if not (self.out_root / job_id / MANIFEST).is_file():
            return
        manifest = read_manifest(self.out_root / job_id)
        before = [s["path"] for s in manifest["sources"]]
        if before != sources:
            raise RequestError(
                409,
                f"job {job_id} exists over other sources {before}: resubmit those to resume it, or use a new job_id",
            )
        if manifest["model_version"] != version:
            raise RequestError(
                409,
                f"job {job_id} was scored by model version {manifest['model_version']} and the service now serves "
                f"{version}: a job keeps one model version, so use a new job_id",
            )
        if manifest.get("embeddings", False) != embeddings:
            said = "with" if manifest.get("embeddings", False) else "without"
            raise RequestError(
                409, f"job {job_id} was started {said} embeddings: resubmit it {said} them, or use a new job_id"
            )

    @staticmethod
    def _run(job_id: str, job: BulkJob) -> None:
        try:
            job.run()
        except Exception:  # the job's status says "failed" with the reason
            log.exception("bulk job %s failed", job_id)

    def _job(self, job_id: str) -> BulkJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestError(404, f"no bulk job {job_id!r} in this service")
        return job

    def _from_disk(self, job_id: str) -> dict | None:
        """What a job folder's manifest says, for jobs this process has not run (e.g. before a restart)."""
        if not _JOB_ID.match(job_id) or not (self.out_root / job_id / MANIFEST).is_file():
            return None
        out_dir = self.out_root / job_id
        manifest = read_manifest(out_dir)
        progress = dict(manifest["progress"])
        if progress.get("status") in ("queued", "running"):
            progress["status"] = "interrupted"  # the process that ran it stopped; resubmit to resume
        return _report(
            job_id, progress, manifest["model_version"], out_dir, [s["path"] for s in manifest["sources"]], manifest
        )

    def list_jobs(self) -> list[dict]:
        """Every job this service knows: those it ran and those found in job folders, by job id."""
        with self._lock:
            ids = set(self._jobs)
        if self.out_root.is_dir():
            ids |= {p.name for p in self.out_root.iterdir() if _JOB_ID.match(p.name) and (p / MANIFEST).is_file()}
        out = []
        for job_id in sorted(ids):
            try:
                out.append(self.status(job_id))
            except (RequestError, OSError, ValueError, KeyError) as exc:  # an unreadable manifest: say so
                out.append({"job_id": job_id, "status": "unreadable", "error": f"{type(exc).__name__}: {exc}"})
        return out

    def status(self, job_id: str) -> dict:
        with self._lock:
            known = job_id in self._jobs
        if not known:
            found = self._from_disk(job_id)
            if found is None:
                raise RequestError(404, f"no bulk job {job_id!r} in this service")
            return found
        job = self._job(job_id)
        manifest = read_manifest(job.out_dir) if (job.out_dir / MANIFEST).is_file() else None
        return _report(job_id, asdict(job.progress), job.model_version, job.out_dir, job.sources, manifest)

    def cancel(self, job_id: str) -> dict:
        job = self._job(job_id)
        job.cancel()
        if job.progress.status == "queued":
            job.progress.status = "cancelled"
        return {"job_id": job_id, "status": job.progress.status, "cancel_requested": True}

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _report(
    job_id: str, progress: dict, version: str, out_dir: Path, sources: list[str], manifest: dict | None
) -> dict:
    """A job's status as the service reports it: progress (with the seconds left at the current rate),
    model version, sources, shards, output files."""
    done = progress.get("scored", 0) + progress.get("skipped", 0)
    out = {
        "job_id": job_id,
        **progress,
        "done": done,
        "eta_s": _eta(progress, done),
        "model_version": version,
        "out_dir": str(out_dir),
        "sources": sources,
        "shards": len(manifest["shards"]) if manifest else 0,
    }
    for name in ("top.csv", "errors.csv"):
        out[name.split(".")[0] + "_file"] = str(out_dir / name) if (out_dir / name).is_file() else ""
    return out


def _eta(progress: dict, done: int) -> float | None:
    """Seconds left at this run's rate while running; 0 when finished; None before a rate is known."""
    if progress.get("status") == "done":
        return 0.0
    rate = progress.get("images_per_second", 0.0)
    if progress.get("status") != "running" or not rate:
        return None
    return round(max(0, progress.get("total", 0) - done) / rate, 1)

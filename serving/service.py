"""The AnomalyMatch scoring service (BentoML): the champion ONNX model in ONNX Runtime.

Run it with ``anomalymatch serve`` (or ``bentoml serve serving.service:AnomalyMatchService`` with the
config in ``ANOMALYMATCH_CONFIG_JSON``). Endpoints (BentoML: POST, JSON or multipart):

- ``/score``: multipart field ``images`` (one or many PNG/JPEG/TIFF/FITS files) ->
  ``[{"id", "score", "model_version"}]``; concurrent requests are batched adaptively.
- ``/info``: model version, the ONNX Runtime providers actually in use, the input spec, batching.
- ``/bulk_submit`` ``{"sources": [...], "top_n"?, "job_id"?, "engine"?}`` (engine local or ray), ``/bulk_status`` and
  ``/bulk_cancel`` ``{"job_id"}``, ``/bulk_jobs``: resumable bulk jobs over server-side sources under the
  data roots (a job id is reused only with the same sources and model version: else 409).
- Labelling (``serving.labels_api``): ``/candidates`` ``{"n"?, "strategy"?}`` (unlabelled images ranked by
  the served model; strategy top, uncertain, explore or similar: nearest to the confirmed anomalies),
  ``/similar`` ``{"image_id", "k"?, "unlabelled"?}`` and ``/similar_upload`` (multipart ``images``, one
  file): "more like this" by the model's stored features, ``/suspects`` ``{"threshold"?, "limit"?}``
  (labels the model's features contradict), ``/saliency`` ``{"image_id", "stretch"?}`` (a PNG: why this score),
  ``/labels`` ``{"labels": [...], "key"?, "user"?}`` (needs ``Authorization: Bearer``),
  ``/retrain_status`` and ``/image`` ``{"image_id", "png"?}`` (the original file).
- ``/ui``: the labelling web app for expert teams (``serving.webapp``).
- BentoML's ``GET /livez`` (health) and ``GET /readyz`` (ready once the model is loaded).

This module and everything it imports are torch-free (a test asserts it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bentoml
import numpy as np
from starlette.responses import JSONResponse, Response

from anomalymatch.display import STRETCHES
from anomalymatch.loader import decode_threads
from anomalymatch.model_ref import resolve_tracking_uri
from anomalymatch.users import Role
from serving import webapp
from serving.batching import AdaptiveBatcher
from serving.jobs import BulkJobs
from serving.labels_api import LabelsApi
from serving.launch import config_from_env
from serving.live_model import LiveModel, LoadedModel
from serving.uploads import (
    MultipartCheck,
    RequestError,
    RequestSizeLimit,
    UploadLimits,
    check_count,
    decode_uploads,
    upload_id,
)
from serving.watcher import start_watcher, stop_watcher

log = logging.getLogger("anomalymatch.serving")
CONFIG = config_from_env()
SERVING = CONFIG.serving


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@bentoml.service(name="anomalymatch", workers=1, traffic={"timeout": 600})
class AnomalyMatchService:
    """One class, one batched scoring method (``score``); bulk jobs reuse its model.

    Batching is ``serving.batching.AdaptiveBatcher`` over decoded pixels rather than BentoML's
    ``batchable=True``: BentoML batches whole requests before the method body runs, so one corrupt
    upload would fail every request in its batch (and could not be a 4xx), and calling a batchable
    method from inside the service goes through its JSON client. Here each request decodes (and fails)
    on its own, and only the valid pixels of concurrent requests are merged for inference.
    """

    def __init__(self) -> None:
        self.config = CONFIG
        data = CONFIG.data_path
        self.model = LiveModel(
            SERVING.model,
            resolve_tracking_uri(CONFIG.tracking.tracking_uri, data),
            data / "serving" / "models",
            CONFIG.tracking.registered_model,
            SERVING.reload_interval_s,
            SERVING.providers,
            SERVING.threads,
            SERVING.precision,
        )
        self.limits = UploadLimits(SERVING.max_images_per_request, SERVING.max_upload_bytes, SERVING.max_image_pixels)
        self.decode_pool = ThreadPoolExecutor(decode_threads(CONFIG.workers), thread_name_prefix="anomalymatch-upload")
        self.batcher = (
            AdaptiveBatcher(self._run_batch, SERVING.max_batch_size, SERVING.max_latency_ms)
            if SERVING.batching
            else None
        )
        self.jobs = BulkJobs(
            data / "bulk",
            SERVING.data_roots,
            SERVING.bulk_batch_size,
            CONFIG.workers,
            SERVING.bulk_shard_rows,
            SERVING.top_n,
            catalogue=lambda ids: self.label_api.store.catalogue_for(ids),  # the attached one, into top.csv
        )
        self.label_api = LabelsApi(CONFIG)
        self.workbench = webapp.app.state.workbench = webapp.Workbench(
            self.label_api,
            lambda: self.model.current,
            resolve_tracking_uri(CONFIG.tracking.tracking_uri, data),
            CONFIG.tracking.registered_model,
        )
        self.watcher = start_watcher(CONFIG) if CONFIG.retrain.in_service else None

    @staticmethod
    def _run_batch(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        return model.scorer.score(pixels, batch_size=max(len(pixels), 1))

    def __is_ready__(self) -> bool:
        return self.model.current is not None

    @bentoml.api
    async def score(self, images: list[Path]) -> list[dict[str, Any]]:
        """Anomaly scores for uploaded images (multipart field ``images``), in upload order."""
        loop = asyncio.get_running_loop()
        model = self.model.current  # this request keeps this model even if a reload swaps it
        try:
            check_count(len(images), self.limits)
            files = [(upload_id(p), p.read_bytes) for p in images]
            if self.batcher is None:
                pixels = await loop.run_in_executor(
                    None, decode_uploads, files, model.scorer.spec, self.limits, self.decode_pool
                )
                scores = await loop.run_in_executor(None, self._run_batch, model, pixels)
            else:
                with self.batcher.expect():
                    pixels = await loop.run_in_executor(
                        None, decode_uploads, files, model.scorer.spec, self.limits, self.decode_pool
                    )
                    future = self.batcher.submit(model, pixels)
                scores = await asyncio.wrap_future(future)
        except RequestError as exc:
            return _error(exc)  # type: ignore[return-value]
        return [{"id": name, "score": float(s), "model_version": model.version} for (name, _), s in zip(files, scores)]

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """Model version, providers in use, input spec, batching and limits."""
        current = self.model.current
        return {
            **current.info(),
            "model_ref": self.model.ref.text,
            "reload_error": self.model.reload_error,
            "batching": {
                "enabled": self.batcher is not None,
                "max_batch_size": SERVING.max_batch_size,
                "max_latency_ms": SERVING.max_latency_ms,
                "recent_batch_sizes": list(self.batcher.batch_sizes)[-20:] if self.batcher else [],
            },
            "limits": {
                "max_images_per_request": SERVING.max_images_per_request,
                "max_upload_bytes": SERVING.max_upload_bytes,
                "max_image_pixels": SERVING.max_image_pixels,
            },
            "data_roots": list(SERVING.data_roots),
            "pid": os.getpid(),
        }

    def _as(self, ctx: bentoml.Context, needed: Role, work: Callable[[], Any]) -> Any:
        """``work()`` if the request's token grants ``needed`` (see ``anomalymatch.users``), else the 401/403;
        a ``RequestError`` from ``work`` becomes its 4xx too."""
        try:
            self.label_api.require(ctx.request.headers.get("authorization"), needed)
            return work()
        except RequestError as exc:
            ctx.response.status_code = exc.status  # with a ctx parameter BentoML takes the status from it
            return _error(exc)

    @bentoml.api
    def bulk_submit(
        self,
        ctx: bentoml.Context,
        sources: list[str],
        top_n: int | None = None,
        job_id: str = "",
        engine: str = "local",
        embeddings: bool = False,
    ) -> dict[str, Any]:
        """Start (or, with an existing ``job_id``, resume) a bulk job over server-side sources (admin);
        ``engine`` "ray" runs it on the Ray cluster at ``$RAY_ADDRESS`` (else a local Ray instance);
        ``embeddings`` (local engine) stores each image's features too, for "more like this" over the job."""
        submit = self.jobs.submit
        return self._as(
            ctx,
            Role.ADMIN,
            lambda: submit(sources, self.model.current, top_n, job_id, engine=engine, embeddings=embeddings),
        )

    @bentoml.api
    def bulk_status(self, ctx: bentoml.Context, job_id: str) -> dict[str, Any]:
        """Progress of a bulk job: status, scored, skipped, images/s, output files (admin)."""
        return self._as(ctx, Role.ADMIN, lambda: self.jobs.status(job_id))

    @bentoml.api
    def bulk_jobs(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Every bulk job the service knows, with its status (also jobs run before a restart) (admin)."""
        return self._as(ctx, Role.ADMIN, lambda: {"jobs": self.jobs.list_jobs()})

    @bentoml.api
    def bulk_cancel(self, ctx: bentoml.Context, job_id: str) -> dict[str, Any]:
        """Stop a bulk job at its next batch; what was scored stays committed (resume by resubmitting) (admin)."""
        return self._as(ctx, Role.ADMIN, lambda: self.jobs.cancel(job_id))

    @bentoml.api
    def candidates(self, ctx: bentoml.Context, n: int = 20, strategy: str = "top") -> dict[str, Any]:
        """Up to ``n`` unlabelled images ranked by the served model's scores (strategy top, uncertain, explore)."""
        return self._as(ctx, Role.VIEWER, lambda: self.label_api.candidates(self.model.current.version, n, strategy))

    @bentoml.api
    def similar(self, ctx: bentoml.Context, image_id: str, k: int = 50, unlabelled: bool = False) -> dict[str, Any]:
        """The ``k`` images most like ``image_id`` by the served model's stored features ("more like this")."""
        return self._as(
            ctx, Role.VIEWER, lambda: self.label_api.similar(self.model.current.version, image_id, k, unlabelled)
        )

    @bentoml.api(route="/saliency")  # not a method named ``saliency``: keeps the name free for the module
    def saliency_map(self, ctx: bentoml.Context, image_id: str, stretch: str = "linear") -> bytes:
        """Why this score: the image with the served model's occlusion map over it, as a PNG (red: what
        raises the anomaly score, blue: what lowers it)."""

        def send() -> Response:
            if stretch not in STRETCHES:
                raise RequestError(400, f"unknown stretch {stretch!r}; use one of {sorted(STRETCHES)}")
            return Response(self.workbench.saliency(image_id, stretch), media_type="image/png")

        return self._as(ctx, Role.VIEWER, send)

    @bentoml.api
    def suspects(self, ctx: bentoml.Context, threshold: float = 0.8, limit: int = 100) -> dict[str, Any]:
        """Labelled images whose label the served model's features contradict out of fold (most doubted first)."""
        return self._as(ctx, Role.VIEWER, lambda: self.label_api.suspects(self.model.current.version, threshold, limit))

    @bentoml.api
    async def similar_upload(
        self, ctx: bentoml.Context, images: list[Path], k: int = 50, unlabelled: bool = False
    ) -> dict[str, Any]:
        """The ``k`` archive images most like one uploaded image (multipart field ``images``, one file)."""
        loop = asyncio.get_running_loop()
        model = self.model.current
        authorization = ctx.request.headers.get("authorization")  # the request context stays on this thread

        def work() -> dict[str, Any]:
            self.label_api.require(authorization, Role.VIEWER)
            if len(images) != 1:
                raise RequestError(400, f"send exactly one image in the multipart field 'images', got {len(images)}")
            files = [(upload_id(p), p.read_bytes) for p in images]
            pixels = decode_uploads(files, model.scorer.spec, self.limits, self.decode_pool)
            try:
                vector = model.scorer.embed(pixels)[0]
            except ValueError as exc:  # a model exported before embeddings
                raise RequestError(409, str(exc)) from None
            return self.label_api.similar(model.version, vector, k, unlabelled)

        try:
            return await loop.run_in_executor(None, work)
        except RequestError as exc:
            ctx.response.status_code = exc.status
            return _error(exc)  # type: ignore[return-value]

    @bentoml.api
    def labels(
        self, labels: list[dict[str, Any]], ctx: bentoml.Context, key: str = "", user: str = ""
    ) -> dict[str, Any]:
        """Store a batch of labels in one transaction (all or none); ``key`` makes a re-post a no-op."""
        try:
            return self.label_api.post(labels, key, user, ctx.request.headers.get("authorization"))
        except RequestError as exc:
            ctx.response.status_code = exc.status  # with a ctx parameter BentoML takes the status from it
            return _error(exc)  # type: ignore[return-value]

    @bentoml.api
    def retrain_status(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Retraining: idle / queued / running / failed, the last version, new labels waiting."""

        def status() -> dict[str, Any]:
            out = self.label_api.status()
            out["serving_version"] = self.model.current.version
            out["watcher_in_service"] = self.watcher is not None and self.watcher.poll() is None
            return out

        return self._as(ctx, Role.VIEWER, status)

    @bentoml.api(route="/image")  # not a method named ``image``: BentoML's service has that attribute
    def fetch_image(self, ctx: bentoml.Context, image_id: str, png: bool = False) -> bytes:
        """The original file of a registered image (``png``: rendered as PNG at its own resolution), sent
        with its media type and file name (a ``Response``: BentoML passes it through)."""

        def send() -> Response:
            found = self.label_api.image(image_id, png)
            plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in found.filename)
            headers = {
                "content-disposition": f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(found.filename)}"
            }
            return Response(found.data, media_type=found.media_type, headers=headers)

        return self._as(ctx, Role.VIEWER, send)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if self.watcher is not None:
            stop_watcher(self.watcher)
        self.label_api.close()
        self.jobs.close()
        if self.batcher is not None:
            self.batcher.close()
        self.model.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)


AnomalyMatchService.mount_asgi_app(webapp.app, path="/ui")
AnomalyMatchService.add_asgi_middleware(RequestSizeLimit, max_bytes=SERVING.max_upload_bytes)
AnomalyMatchService.add_asgi_middleware(MultipartCheck, max_bytes=SERVING.max_upload_bytes)

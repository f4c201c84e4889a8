"""The expert's workbench: a labelling web app at ``/ui`` of the scoring service (no second server).

A Starlette app mounted on the BentoML service; the page and its assets are plain HTML/CSS/JS shipped in
``serving/webui`` (nothing fetched from a network). The JSON API under ``/ui/api`` reuses the labelling
endpoints' logic (``serving.labels_api``) and the same tokens and roles (``anomalymatch.users``): sign-in
checks a token and keeps it in an HttpOnly, SameSite=Strict cookie scoped to ``/ui``, so thumbnails load
as plain ``<img>`` requests; an ``Authorization: Bearer`` header works as well.

- ``GET /ui/api/queue?strategy&offset&limit``: a page of unlabelled candidates of the served model;
- ``GET /ui/api/thumb?id&stretch&size`` and ``/ui/api/render?id&stretch&brightness&contrast&channels&invert``:
  PNGs rendered here with the display transform of ``anomalymatch.display`` (thumbnails cached in memory);
- ``GET /ui/api/saliency?id&stretch``: the image with the served model's occlusion map over it;
- ``GET /ui/api/image?id``: score, model version and every expert's labels of one image;
- ``POST /ui/api/label`` ``{image_id, label, key, comment?}`` (idempotent by ``key``), ``POST /ui/api/undo``
  ``{seq}`` (one's own label; admins any);
- ``GET /ui/api/status``: the served model version and retraining (the page polls it);
- ``GET /ui/api/dashboard``: labels by user and day, the discovery curve, retraining, registry versions,
  the served model's ROC/PR on labels given after it scored them; ``GET /ui/api/export.csv``;
- ``GET /ui/api/disagreements``, ``GET /ui/api/suspects`` (labels the model's features contradict),
  ``GET``/``POST /ui/api/settings`` (the label policy; admin to change).
"""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from anomalymatch.csv_cells import SafeCsvWriter
from anomalymatch.display import STRETCHES, adjust_image, thumbnail, to_png
from anomalymatch.errors import DecodeError
from anomalymatch.label_policy import LabelPolicy, disagreements
from anomalymatch.labels import LabelTable
from anomalymatch.labelstore import LabelStoreError
from anomalymatch.metrics import pr_curve_points, roc_curve_points
from anomalymatch.saliency import occlusion_map, overlay_png
from anomalymatch.users import SHARED_USER, Role, User
from serving.labels_api import LabelsApi, bearer_token, with_catalogue
from serving.uploads import RequestError

T = TypeVar("T")
STATIC = Path(__file__).parent / "webui"
COOKIE = "anomalymatch_token"
THUMB_SIZES = (64, 96, 128, 192, 256)
MAX_CURVE_POINTS = 400
SALIENCY_AT_ONCE = 2  # occlusion maps computed at the same time (each is a batch of ~225 model passes)


class PngCache:
    """Rendered PNGs by key, least recently used dropped beyond ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make()
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes and self._items:
                    self._bytes -= len(self._items.popitem(last=False)[1])
        return data


class Workbench:
    """What the web app needs from the service: the labelling logic and the served model's version."""

    def __init__(self, labels: LabelsApi, model: Callable[[], Any], tracking_uri: str, registered_model: str):
        self.labels = labels
        self.store = labels.store
        self.model = model  # the served model now: .version and .scorer (serving.live_model.LoadedModel)
        self.tracking_uri = tracking_uri
        self.registered_model = registered_model
        self.thumbs = PngCache()
        self._saliency_slots = threading.BoundedSemaphore(SALIENCY_AT_ONCE)

    def version(self) -> str:
        return self.model().version

    # -- images ---------------------------------------------------------------------------------------------
    def _known(self, image_id: str) -> None:
        if not image_id:
            raise RequestError(400, "send 'id', an image id from the queue")
        if self.store.unknown_ids([image_id]):
            raise RequestError(404, f"image {image_id!r} is not registered in the label store")

    @staticmethod
    def _read(image_id: str, read: Callable[[], T]) -> T:
        """``read()`` of a registered image, its failures as 404 (no source serves it) or 422 (not decodable)."""
        try:
            return read()
        except KeyError:
            raise RequestError(404, f"image {image_id!r} is in no campaign's image sources served here") from None
        except DecodeError as exc:
            raise RequestError(422, f"image {image_id!r} cannot be shown: {exc.reason}") from None

    def _pixels(self, image_id: str) -> np.ndarray:
        self._known(image_id)
        return self._read(image_id, lambda: self.labels.library.read_display(image_id))

    def thumb(self, image_id: str, stretch: str, size: int) -> bytes:
        return self.thumbs.get(
            (image_id, stretch, size), lambda: to_png(thumbnail(adjust_image(self._pixels(image_id), stretch), size))
        )

    def render(self, image_id: str, stretch: str, brightness: float, contrast: float, channels, invert) -> bytes:
        return to_png(adjust_image(self._pixels(image_id), stretch, brightness, contrast, channels, invert))

    def saliency(self, image_id: str, stretch: str) -> bytes:
        """The display image with the served model's occlusion map over it (``anomalymatch.saliency``);
        cached per image, stretch and model version, and at most ``SALIENCY_AT_ONCE`` computed at a time."""
        model = self.model()
        self._known(image_id)

        def make() -> bytes:
            if not self._saliency_slots.acquire(timeout=30):
                raise RequestError(503, "saliency maps are busy; retry in a moment")
            try:
                pixels = self._read(image_id, lambda: self.labels.library.read_model_input(image_id, model.scorer.spec))
                _, heat = occlusion_map(model.scorer, pixels)
            finally:
                self._saliency_slots.release()
            return overlay_png(adjust_image(self._pixels(image_id), stretch), heat)

        return self.thumbs.get(("saliency", image_id, stretch, model.version), make)

    def image(self, image_id: str) -> dict[str, Any]:
        self._known(image_id)
        version = self.version()
        score = self.store.scores_for(version, [image_id]).get(image_id)
        history = [
            {"seq": r.seq, "label": r.label.value, "user": r.user, "time": r.time.isoformat(), "comment": r.comment}
            for r in self.store.history(image_id)
        ]
        disputed = bool(disagreements(self.store.history(image_id), self.store.admin_names()))
        return with_catalogue(
            self.store,
            [
                {
                    "image_id": image_id,
                    "model_version": version,
                    "score": score,
                    "labels": history,
                    "disputed": disputed,
                }
            ],
        )[0]

    # -- dashboard ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the page polls: the served model version and the retraining status."""
        return {"model_version": self.version(), "retrain": self.labels.status()}

    def dashboard(self) -> dict[str, Any]:
        version = self.version()
        retrain = self.labels.status()
        labels = self.store.current_labels(with_extra=False)  # read once for the counts and the evaluation
        return {
            "model_version": version,
            "retrain": retrain,
            "label_policy": self.store.label_policy().value,
            "activity": self.store.label_activity(),
            "discovery": _thin(self.store.discovery_curve()),
            "counts": {"images": self.store.n_images(), **self.store.label_counts(labels)},
            "versions": self._versions(),
            "evaluation": self._evaluation(version, labels),
        }

    def _versions(self) -> dict[str, Any]:
        try:
            from registry.store import list_versions

            versions = list_versions(self.tracking_uri, self.registered_model)[:20]
        except Exception as exc:  # the registry may be down; the rest of the dashboard still works
            return {"error": f"the model registry could not be read: {exc}", "items": []}
        items = []
        for v in versions:
            tags = {k: v.tags[k] for k in sorted(v.tags) if len(v.tags[k]) <= 300}
            items.append(
                {
                    "version": v.version,
                    "aliases": list(v.aliases),
                    "created_ms": v.created,
                    "gate": v.gate,
                    "parity": v.parity,
                    "holdout": v.holdout,
                    "metrics": v.metrics,
                    "run_id": v.run_id,
                    "tags": tags,
                }
            )
        return {"items": items}

    def _evaluation(self, version: str, labels: LabelTable) -> dict[str, Any]:
        """The served model on labels given after it scored those images (they were not in its training
        set): a biased sample (experts label the top of the ranking) but honest about new labels."""
        ids, y, s = self.store.scored_labels(version, labels)
        out: dict[str, Any] = {"n": len(ids), "n_anomalies": int(y.sum()) if len(y) else 0}
        if len(ids) < 2 or out["n_anomalies"] in (0, len(ids)):
            out["message"] = "needs labels of both classes on images this model version scored"
            return out
        fpr, tpr, _ = roc_curve_points(y, s)
        precision, recall, _ = pr_curve_points(y, s)
        from anomalymatch.metrics import auroc, average_precision

        out.update(
            auroc=auroc(y, s),
            auprc=average_precision(y, s),
            roc=_thin({"x": fpr.tolist(), "y": tpr.tolist()}),
            pr=_thin({"x": recall.tolist(), "y": precision.tolist()}),
        )
        return out

    def export_anomalies(self) -> str:
        """The labelled anomalies as CSV: label, who, when, comment, the served model's score, and the
        attached catalogue's coordinates and columns."""
        table = self.store.current_labels()
        picked = [k for k, label in enumerate(table.labels) if label.value == "anomaly"]
        ids = [table.ids[k] for k in picked]
        scores = self.store.scores_for(self.version(), ids)
        catalogue = self.store.catalogue_for(ids)
        extra = sorted({c for row in catalogue.values() for c in row.columns})
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image_id", "label", "user", "time", "comment", "score", "ra", "dec", *extra])
        writer = SafeCsvWriter(writer)
        for k, image_id in zip(picked, ids):
            score, row = scores.get(image_id), catalogue.get(image_id)
            coords = ["" if v is None else f"{v:.6f}" for v in ((row.ra, row.dec) if row else (None, None))]
            writer.writerow(
                [
                    image_id,
                    "anomaly",
                    table.extra["user"][k],
                    table.extra["time"][k],
                    table.extra["comment"][k],
                    "" if score is None else f"{score:.6f}",
                    *coords,
                    *[(row.columns.get(c, "") if row else "") for c in extra],
                ]
            )
        return buf.getvalue()


def _thin(curve: dict[str, list]) -> dict[str, list]:
    """At most ``MAX_CURVE_POINTS`` evenly spaced points of a curve (first and last kept)."""
    n = len(curve["x"])
    if n <= MAX_CURVE_POINTS:
        return curve
    keep = np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in curve.items()}


# -- request handling ---------------------------------------------------------------------------------------
@dataclass
class Call:
    """One request to the API: the query, the JSON body of a POST, who sent it and their credentials."""

    request: Request
    body: dict
    user: User | None
    authorization: str | None

    def int(self, name: str, default: int, low: int, high: int) -> int:
        return self._number(name, default, low, high, int, "an integer")

    def float(self, name: str, default: float, low: float, high: float) -> float:
        return self._number(name, default, low, high, float, "a number")

    def _number(self, name: str, default, low, high, parse: Callable, kind: str):
        """Query parameter ``name`` parsed and within [low, high] (which also refuses NaN), else a 400."""
        raw = self.request.query_params.get(name)
        try:
            value = default if raw is None else parse(raw)
        except ValueError:
            raise RequestError(400, f"{name} must be {kind}, got {raw!r}") from None
        if not low <= value <= high:
            raise RequestError(400, f"{name} must be from {low} to {high}, got {value}")
        return value

    def stretch(self) -> str:
        stretch = self.request.query_params.get("stretch", "linear")
        if stretch not in STRETCHES:
            raise RequestError(400, f"unknown stretch {stretch!r}; use one of {sorted(STRETCHES)}")
        return stretch

    def image_id(self) -> str:
        return self.request.query_params.get("id", "")


def _bench(request: Request) -> Workbench:
    bench = getattr(request.app.state, "workbench", None)
    if bench is None:
        raise RequestError(503, "the workbench is starting; retry in a moment")
    return bench


def _authorization(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not bearer_token(header) and request.cookies.get(COOKIE):
        return f"Bearer {request.cookies[COOKIE]}"
    return header


def endpoint(needed: Role, work: Callable[[Workbench, Call], Any], body: bool = False) -> Callable:
    """An API endpoint: reads a JSON object body for POSTs (``body``), checks the token grants ``needed``,
    runs ``work`` in the thread pool; a ``RequestError`` becomes its JSON 4xx."""

    async def handle(request: Request) -> Response:
        payload: dict = {}
        if body:
            if not _is_json(request):
                return _not_json()
            try:
                payload = await request.json()
            except ValueError:
                payload = None  # type: ignore[assignment]
            if not isinstance(payload, dict):
                return JSONResponse({"error": "send a JSON object body", "detail": []}, status_code=400)

        def run() -> Response:
            try:
                bench = _bench(request)
                authorization = _authorization(request)
                user = bench.labels.require(authorization, needed)
                out = work(bench, Call(request, payload, user, authorization))
            except RequestError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            return out if isinstance(out, Response) else JSONResponse(out)

        return await run_in_threadpool(run)

    return handle


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"cache-control": "private, max-age=3600"})


def _me(user: User | None) -> dict[str, Any]:
    if user is None:  # open mode: reading is free, labelling is off
        return {"user": "", "role": "viewer", "open": True, "shared": False}
    return {"user": user.name, "role": user.role.value, "open": False, "shared": user.name == SHARED_USER}


def _is_json(request: Request) -> bool:
    """POSTs must say they are JSON: a cross-site form or ``text/plain`` post (a CORS "simple" request,
    sent with the cookie) is refused before anything runs."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def _not_json() -> Response:
    return JSONResponse({"error": "send the body as JSON (content-type: application/json)", "detail": []}, 415)


async def signin(request: Request) -> Response:
    """Check a token (any role) and keep it in the session cookie."""
    if not _is_json(request):
        return _not_json()
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or len(token) > 500:
        return JSONResponse({"error": "send {'token': '<your token>'}", "detail": []}, status_code=400)
    try:
        bench = _bench(request)
        user = await run_in_threadpool(bench.labels.require, f"Bearer {token}" if token else None, Role.VIEWER)
    except RequestError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    response = JSONResponse(_me(user))
    if token:
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/ui")
    return response


async def signout(request: Request) -> Response:
    if not _is_json(request):
        return _not_json()
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(COOKIE, path="/ui")
    return response


def _queue(bench: Workbench, call: Call) -> dict[str, Any]:
    offset = call.int("offset", 0, 0, 10_000_000)
    limit = call.int("limit", 60, 1, 500)
    strategy = call.request.query_params.get("strategy", "top")
    out = bench.labels.candidates(bench.version(), limit, strategy, offset)
    out["offset"] = offset
    return out


def _thumb(bench: Workbench, call: Call) -> Response:
    size = call.int("size", 128, 16, 512)
    size = min(THUMB_SIZES, key=lambda s: abs(s - size))  # a few sizes, so the cache stays useful
    return _png(bench.thumb(call.image_id(), call.stretch(), size))


def _render(bench: Workbench, call: Call) -> Response:
    channels = call.request.query_params.get("channels", "111")
    if len(channels) != 3 or set(channels) - {"0", "1"}:
        raise RequestError(400, f"channels is three 0/1 flags (R, G, B), got {channels!r}")
    return _png(
        bench.render(
            call.image_id(),
            call.stretch(),
            call.float("brightness", 0.0, -1.0, 1.0),
            call.float("contrast", 1.0, 0.1, 10.0),
            tuple(c == "1" for c in channels),
            call.request.query_params.get("invert", "0") in ("1", "true"),
        )
    )


def _label(bench: Workbench, call: Call) -> dict[str, Any]:
    image_id, label, key = call.body.get("image_id"), call.body.get("label"), call.body.get("key")
    if not isinstance(image_id, str) or not isinstance(label, str):
        raise RequestError(400, "send {'image_id', 'label': 'anomaly'|'nominal', 'key'}")
    if not isinstance(key, str) or not 8 <= len(key) <= 100:
        raise RequestError(400, "send 'key', a unique string (8-100 characters) per label, reused on retries")
    comment = call.body.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > 2000:
        raise RequestError(400, "comment must be text of at most 2000 characters")
    name = call.body.get("user") if isinstance(call.body.get("user"), str) else ""
    entry = {"image_id": image_id, "label": label, "comment": comment}
    out = bench.labels.post([entry], f"ui:{key}", name, call.authorization)
    seq = bench.store.batch_seqs(f"ui:{key}")  # this key's label, also when this post is a retry
    seq = seq[0] if seq else None
    return {"stored": out["added"] > 0, "replayed": out["replayed"], "seq": seq, "retrain": out["retrain"]}


def _undo(bench: Workbench, call: Call) -> dict[str, Any]:
    seq = call.body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise RequestError(400, "send {'seq': <the sequence number of your label>}")
    user = call.user
    owner = None if user is not None and user.role is Role.ADMIN else (user.name if user else "")
    try:
        record = bench.store.delete_label(seq, owner, batch_prefix="ui:")
    except LabelStoreError as exc:
        raise RequestError(404 if "no label with" in str(exc) else 403, str(exc)) from None
    return {"withdrawn": {"seq": record.seq, "image_id": record.image_id, "label": record.label.value}}


POLICIES = [p.value for p in LabelPolicy]


def _settings(bench: Workbench, call: Call) -> dict[str, Any]:
    return {"label_policy": bench.store.label_policy().value, "policies": POLICIES}


def _admin(call: Call) -> None:
    """Open mode lets anyone read; what an admin decides needs a signed-in admin."""
    if call.user is None:
        raise RequestError(403, "this needs a signed-in admin: add one with `anomalymatch users add NAME --role admin`")


def _set_settings(bench: Workbench, call: Call) -> dict[str, Any]:
    _admin(call)
    try:
        policy = bench.store.set_label_policy(call.body.get("label_policy", ""))
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    return {"label_policy": policy.value, "policies": POLICIES}


def _disagreements(bench: Workbench, call: Call) -> dict[str, Any]:
    _admin(call)
    found = bench.store.disagreements(limit=call.int("limit", 200, 1, 5000))
    return {"items": [{"image_id": d.image_id, "labels": d.labels, "last_seq": d.last_seq} for d in found]}


def _export(bench: Workbench, call: Call) -> Response:
    return Response(
        bench.export_anomalies(),
        media_type="text/csv",
        headers={"content-disposition": 'attachment; filename="anomalies.csv"'},
    )


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


V, L, A = Role.VIEWER, Role.LABELLER, Role.ADMIN
app = Starlette(
    routes=[
        Route("/", _index),
        Route("/api/signin", signin, methods=["POST"]),
        Route("/api/signout", signout, methods=["POST"]),
        Route("/api/me", endpoint(V, lambda bench, call: _me(call.user))),
        Route("/api/queue", endpoint(V, _queue)),
        Route("/api/thumb", endpoint(V, _thumb)),
        Route("/api/render", endpoint(V, _render)),
        Route("/api/saliency", endpoint(V, lambda bench, call: _png(bench.saliency(call.image_id(), call.stretch())))),
        Route("/api/image", endpoint(V, lambda bench, call: bench.image(call.image_id()))),
        Route("/api/label", endpoint(L, _label, body=True), methods=["POST"]),
        Route("/api/undo", endpoint(L, _undo, body=True), methods=["POST"]),
        Route("/api/status", endpoint(V, lambda bench, call: bench.status())),
        Route("/api/dashboard", endpoint(V, lambda bench, call: bench.dashboard())),
        Route("/api/export.csv", endpoint(V, _export)),
        Route("/api/settings", endpoint(V, _settings)),
        Route("/api/settings", endpoint(A, _set_settings, body=True), methods=["POST"]),
        Route("/api/disagreements", endpoint(A, _disagreements)),
        Route("/api/suspects", endpoint(V, lambda bench, call: bench.labels.suspects(bench.version(), limit=50))),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
)

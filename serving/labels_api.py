"""The labelling endpoints' logic, framework-free: candidates, label intake, retraining status, images.

The BentoML service calls these and turns ``RequestError`` into its HTTP status (``serving.uploads``):
400 bad request, 401 missing or unknown token, 403 a role too low or writes disabled (no users and no
shared token), 404 unknown image, 409 idempotency key reused, 413 too many labels, 422 unknown label
value or image id (nothing of the batch is written), 503 the configured token file is missing. Who may
do what is ``anomalymatch.users.authorize``: personal tokens with roles (``anomalymatch users add``) or
the shared token of ``labelstore.token_env`` / ``labelstore.token_file`` (one admin), sent as
``Authorization: Bearer <token>``.

The retrain watcher the service runs beside itself (``retrain.in_service``) is ``serving.watcher``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from anomalymatch.campaign_images import ImageFile, ImageLibrary
from anomalymatch.catalogue import sky_links
from anomalymatch.config import AppConfig, RetrainConfig
from anomalymatch.embeddings import EmbeddingSet, NoEmbeddingError, embeddings_path
from anomalymatch.errors import DecodeError
from anomalymatch.labelstore import (
    BadLabelError,
    CandidateStrategy,
    IdempotencyConflictError,
    LabelStore,
    LabelStoreError,
    UnknownImageError,
)
from anomalymatch.retrain_state import evaluate, read_state, state_path
from anomalymatch.suspects import DEFAULT_THRESHOLD, find_suspects
from anomalymatch.users import SHARED_USER, AuthError, Role, User, authorize
from serving.uploads import RequestError

MAX_CANDIDATES = 1000
MAX_LABELS_PER_POST = 10_000
SIMILAR = "similar"  # served here from the stored embeddings, not by the label store's query
STRATEGIES = [s.value for s in CandidateStrategy] + [SIMILAR]
MAX_SIMILAR = 1000
MAX_SIMILAR_RANKING = 10_000  # how deep the 'similar' queue ranks (computed once per label and model)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' when absent)."""
    if not authorization:
        return ""
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def get_candidates(
    store: LabelStore, version: str, n: int = 20, strategy: str = "top", offset: int = 0
) -> dict[str, Any]:
    """Up to ``n`` unlabelled images scored by model ``version``, ranked by ``strategy`` (top, the paper's;
    uncertain: scores nearest 0.5; explore: random), from position ``offset`` of that ranking."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CANDIDATES:
        raise RequestError(400, f"n must be an integer from 1 to {MAX_CANDIDATES}, got {n!r}")
    if strategy not in STRATEGIES:
        raise RequestError(400, f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if strategy == SIMILAR:
        raise RequestError(400, "the 'similar' strategy needs the service's embeddings (LabelsApi.candidates)")
    rows = store.select_candidates(version, n, strategy, offset=offset)
    out: dict[str, Any] = {
        "model_version": version,
        "strategy": strategy,
        "n": len(rows),
        "candidates": with_catalogue(
            store,
            [{"image_id": c.image_id, "score": float(c.score), "rank": k} for k, c in enumerate(rows, offset + 1)],
        ),
    }
    if not rows and not offset:
        out["message"] = (
            f"no unlabelled images scored by model version {version!r} in the label store: its "
            "scores come with each retrain, or load them with LabelStore.import_scores_parquet "
            "from a bulk scoring job"
        )
    return out


def with_catalogue(store: LabelStore, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (each with an ``image_id``) with the attached catalogue's ``ra``, ``dec``, ``catalogue`` columns
    and sky-viewer ``links`` added where the catalogue has the image."""
    found = store.catalogue_for([r["image_id"] for r in rows])
    for row in rows:
        entry = found.get(row["image_id"])
        if entry is not None:
            row.update(ra=entry.ra, dec=entry.dec, catalogue=entry.columns, links=sky_links(entry.ra, entry.dec))
    return rows


def post_labels(
    store: LabelStore, labels: Sequence[Mapping[str, Any]], key: str = "", user: str = ""
) -> dict[str, Any]:
    """Store a batch of labels (``[{"image_id", "label", "user"?, "time"?, "comment"?}]``) in one transaction;
    ``key`` makes a re-post a no-op. The caller checks the token first."""
    if not isinstance(labels, (list, tuple)) or not labels:
        raise RequestError(
            400, 'send a non-empty list \'labels\' of {"image_id", "label"} objects (optional: user, time, comment)'
        )
    if len(labels) > MAX_LABELS_PER_POST:
        raise RequestError(413, f"too many labels in one post: {len(labels)} > {MAX_LABELS_PER_POST}; split it")
    bad = [k for k, entry in enumerate(labels) if not isinstance(entry, Mapping)]
    if bad:
        raise RequestError(400, f'labels entries {bad[:10]} are not objects; each is {{"image_id", "label"}}')
    try:
        result = store.add_labels(labels, key=key or None, user=user or None)
    except UnknownImageError as exc:
        raise RequestError(422, str(exc), [{"id": i, "reason": "unknown image id"} for i in exc.ids[:100]]) from None
    except BadLabelError as exc:
        raise RequestError(422, str(exc), [{"value": v, "reason": "unknown label value"} for v in exc.values]) from None
    except IdempotencyConflictError as exc:
        raise RequestError(409, str(exc)) from None
    except LabelStoreError as exc:
        raise RequestError(400, str(exc)) from None
    return {
        "added": result.added,
        "skipped": result.skipped,
        "replayed": result.replayed,
        "key": result.key,
        "last_seq": result.last_seq,
    }


def retrain_status(path: str | os.PathLike, store: LabelStore, cfg: RetrainConfig) -> dict[str, Any]:
    """The watcher's status (idle / queued / running / failed) from its state file and the label store."""
    return evaluate(read_state(path), store, cfg)


def fetch_image(store: LabelStore, library: ImageLibrary, image_id: str, render_png: bool = False) -> ImageFile:
    """The image file of a registered ``image_id`` (404 otherwise)."""
    if not isinstance(image_id, str) or not image_id:
        raise RequestError(400, "send 'image_id', an id from the candidates list")
    if store.unknown_ids([image_id]):
        raise RequestError(404, f"image {image_id!r} is not registered in the label store")
    try:
        return library.read(image_id, render_png)
    except KeyError:
        raise RequestError(
            404, f"image {image_id!r} is registered but in no campaign's image sources that this service may read"
        ) from None
    except DecodeError as exc:
        raise RequestError(422, f"image {image_id!r} cannot be served: {exc.reason}") from None


class LabelsApi:
    """What the service holds for the labelling endpoints: the label store, the image library, the token."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.store = LabelStore.from_config(config.labelstore, config.data_path)
        self.library = ImageLibrary(self.store, roots=config.serving.data_roots or None)
        self.state_file = state_path(config.data_path)
        self._embeddings: tuple[tuple[str, int], EmbeddingSet] | None = None
        self._embeddings_lock = threading.Lock()
        self._results: dict[str, tuple[tuple, Any]] = {}  # kind -> (key, result): see _cached
        self._results_lock = threading.Lock()

    def candidates(self, version: str, n: int = 20, strategy: str = "top", offset: int = 0) -> dict[str, Any]:
        if strategy == SIMILAR:
            return self.similar_candidates(version, n, offset)
        return get_candidates(self.store, version, n, strategy, offset)

    # -- "more like this" -----------------------------------------------------------------------------------
    def embeddings(self, version: str) -> EmbeddingSet:
        """The stored vectors of ``version`` (cached until the file changes); 404 when there are none."""
        path = embeddings_path(self.config.data_path, version)
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise RequestError(
                404,
                f"model version {version!r} has no stored embeddings: they come with each retrain of a model "
                "exported with embeddings",
            ) from None
        with self._embeddings_lock:
            if self._embeddings is None or self._embeddings[0] != (version, stamp):
                self._embeddings = ((version, stamp), EmbeddingSet.load(path, self.config.similar))
            return self._embeddings[1]

    def similar(self, version: str, query: np.ndarray | str, k: int = 50, unlabelled: bool = False) -> dict[str, Any]:
        """The ``k`` images most like ``query`` (an image id with a stored vector, or a feature vector of an
        uploaded image) among those ``version`` holds vectors for."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_SIMILAR:
            raise RequestError(400, f"k must be an integer from 1 to {MAX_SIMILAR}, got {k!r}")
        found = self.embeddings(version)
        exclude: set[str] = set(self.store.labelled_ids()) if unlabelled else set()
        if isinstance(query, str):
            try:
                vector = found.vector_of(query)
            except NoEmbeddingError as exc:
                raise RequestError(404, str(exc)) from None
            exclude.add(query)
        else:
            vector = query
        hits = found.nearest(vector, k, exclude=exclude)
        return self._rows(version, hits, "similarity", {"query": query if isinstance(query, str) else "upload"})

    def similar_candidates(self, version: str, n: int, offset: int = 0) -> dict[str, Any]:
        """Unlabelled images nearest to any confirmed anomaly (the best cosine similarity to one of them)."""
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CANDIDATES:
            raise RequestError(400, f"n must be an integer from 1 to {MAX_CANDIDATES}, got {n!r}")
        if offset + n > MAX_SIMILAR_RANKING:
            raise RequestError(400, f"the similar ranking holds the first {MAX_SIMILAR_RANKING} images; page within it")
        ranking = self._cached(("similar", version), lambda: self._similar_ranking(version))
        if isinstance(ranking, str):
            out = self._rows(version, [], "similarity", {"strategy": SIMILAR, "n": 0})
            out["message"] = ranking
            return out
        hits = ranking[offset : offset + n]
        out = self._rows(version, hits, "similarity", {"strategy": SIMILAR}, first_rank=offset + 1)
        out["n"] = len(hits)
        return out

    def _similar_ranking(self, version: str) -> list[tuple[str, float]] | str:
        found = self.embeddings(version)
        table = self.store.current_labels(with_extra=False)
        vectors = []
        for image_id, label in zip(table.ids, table.labels):
            if label.value == "anomaly":
                try:
                    vectors.append(found.vector_of(image_id))
                except NoEmbeddingError:
                    continue
        if not vectors:
            return "no confirmed anomaly has a stored embedding for this model version yet"
        return found.nearest(np.stack(vectors), MAX_SIMILAR_RANKING, exclude=set(table.ids))

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key``, the model's stored embeddings and the labels stored so far (a new
        label or a new retrain recomputes it); one result per kind of key is kept."""
        path = embeddings_path(self.config.data_path, key[1])
        stamp = path.stat().st_mtime_ns if path.exists() else 0
        full = (*key, stamp, self.store.last_seq())
        with self._results_lock:
            hit = self._results.get(key[0])
            if hit is not None and hit[0] == full:
                return hit[1]
        value = compute()
        with self._results_lock:
            self._results[key[0]] = (full, value)
        return value

    def suspects(self, version: str, threshold: float = DEFAULT_THRESHOLD, limit: int = 100) -> dict[str, Any]:
        """Labelled images whose label the model's features contradict out of fold (``anomalymatch.suspects``)."""
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.5 < threshold < 1:
            raise RequestError(400, f"threshold must be a number in (0.5, 1), got {threshold!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CANDIDATES:
            raise RequestError(400, f"limit must be an integer from 1 to {MAX_CANDIDATES}, got {limit!r}")
        try:
            suspects, judged = self._cached(
                ("suspects", version, float(threshold)),
                lambda: find_suspects(self.embeddings(version), self.store.current_labels(), float(threshold)),
            )
        except ValueError as exc:
            raise RequestError(409, f"suspect labels cannot be judged yet: {exc}") from None
        return {
            "model_version": version,
            "threshold": threshold,
            "judged": judged,
            "n": len(suspects),
            "suspects": [dataclasses.asdict(s) for s in suspects[:limit]],
        }

    def _rows(self, version, hits, key, extra, first_rank: int = 1) -> dict[str, Any]:
        scores = self.store.scores_for(version, [i for i, _ in hits])
        rows = [
            {"image_id": i, key: round(s, 6), "score": scores.get(i), "rank": r}
            for r, (i, s) in enumerate(hits, first_rank)
        ]
        return {"model_version": version, **extra, "candidates": with_catalogue(self.store, rows)}

    def require(self, authorization: str | None, needed: Role) -> User | None:
        """The user a request acts as if its token grants ``needed`` (None in open mode: see
        ``anomalymatch.users.authorize``); ``RequestError`` 401/403 otherwise, 503 when the configured
        token file is missing."""
        auth = self.config.labelstore
        try:
            shared = auth.resolve_token()
        except FileNotFoundError as exc:  # the operator's mistake, not the client's
            raise RequestError(503, f"the service's token is unavailable: {exc}") from None
        try:
            return authorize(self.store, bearer_token(authorization), shared, needed)
        except AuthError as exc:
            message = exc.message
            if exc.status == 403 and needed is Role.LABELLER and shared == "":
                message += (
                    f"; add a user (`anomalymatch users add NAME --role labeller`) or set ${auth.token_env} "
                    "(or labelstore.token_file) where the service runs and restart it"
                )
            raise RequestError(exc.status, message) from None

    def post(
        self, labels: Sequence[Mapping[str, Any]], key: str, user: str, authorization: str | None
    ) -> dict[str, Any]:
        """Labels are recorded under the authenticated user; with the shared token (one admin for
        everybody) the ``user`` sent with the batch or its entries is kept, as before per-user tokens."""
        who = self.require(authorization, Role.LABELLER)
        if who is not None and who.name != SHARED_USER:
            user = who.name
            labels = [{**entry, "user": who.name} if isinstance(entry, Mapping) else entry for entry in labels]
        out = post_labels(self.store, labels, key, user)
        out["retrain"] = self.status()["status"]
        return out

    def status(self) -> dict[str, Any]:
        return retrain_status(self.state_file, self.store, self.config.retrain)

    def image(self, image_id: str, render_png: bool = False) -> ImageFile:
        return fetch_image(self.store, self.library, image_id, render_png)

    def close(self) -> None:
        self.library.close()
        self.store.close()

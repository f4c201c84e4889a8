"""A small client for the running service: score files, bytes or uint8 arrays; run bulk jobs.

``score_files(url, paths)`` and ``score_arrays(url, ids, images)`` return ``[{"id", "score",
"model_version"}]`` in input order; requests go ``concurrency`` at a time so the service can batch
them. A 4xx or 5xx raises ``ServiceError`` with the service's message. The HTTP plumbing (base URL,
timeout, error unwrapping) is ``anomalymatch.http_client``, shared with ``labeling.client``.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from anomalymatch.config import LABEL_TOKEN_ENV
from anomalymatch.http_client import HttpClient, ServiceError, post_json  # noqa: F401  (ServiceError: re-exported)


def score_bytes(
    url: str, items: Sequence[tuple[str, bytes]], chunk: int = 32, concurrency: int = 4, timeout: float = 300.0
) -> list[dict]:
    """Score ``(name, encoded bytes)`` pairs; returns one dict per item, in order."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    with HttpClient(url, timeout=timeout) as client:

        def post(part: Sequence[tuple[str, bytes]]) -> list[dict]:
            files = [("images", (name, data, "application/octet-stream")) for name, data in part]
            return client.post_json("score", files=files)

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            results = list(pool.map(post, chunks))
    return [row for part in results for row in part]


def score_files(url: str, paths: Sequence[str | os.PathLike], **kwargs: object) -> list[dict]:
    """Score image files; ids are the file names."""
    return score_bytes(url, [(Path(p).name, Path(p).read_bytes()) for p in paths], **kwargs)  # type: ignore[arg-type]


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def score_arrays(url: str, ids: Sequence[str], images: np.ndarray, **kwargs: object) -> list[dict]:
    """Score decoded uint8 ``(N, H, W, 3)`` images (sent as lossless PNG); ids are yours."""
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    return score_bytes(url, [(f"{i}.png", encode_png(img)) for i, img in zip(ids, images)], **kwargs)  # type: ignore[arg-type]


def info(url: str) -> dict:
    return post_json(url, "info", {}, timeout=30)


def _token(token: str | None) -> str:
    """Bulk jobs need an admin's token (or the shared one) once the service has users: ``token``, else
    ``$ANOMALYMATCH_LABEL_TOKEN``."""
    return token if token is not None else os.environ.get(LABEL_TOKEN_ENV, "")


def submit_bulk(
    url: str, sources: Sequence[str], top_n: int | None = None, job_id: str = "", token: str | None = None
) -> dict:
    payload: dict = {"sources": [str(s) for s in sources], "job_id": job_id}
    if top_n is not None:
        payload["top_n"] = top_n
    return post_json(url, "bulk_submit", payload, timeout=60, token=_token(token))


def bulk_status(url: str, job_id: str, token: str | None = None) -> dict:
    return post_json(url, "bulk_status", {"job_id": job_id}, timeout=30, token=_token(token))


def cancel_bulk(url: str, job_id: str, token: str | None = None) -> dict:
    return post_json(url, "bulk_cancel", {"job_id": job_id}, timeout=30, token=_token(token))


def wait_bulk(url: str, job_id: str, timeout: float = 600.0, poll_s: float = 0.2, token: str | None = None) -> dict:
    """Poll until the job is done, cancelled or failed; returns its last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = bulk_status(url, job_id, token)
        if status["status"] in ("done", "cancelled", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)

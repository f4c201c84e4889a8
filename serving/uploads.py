"""Uploaded files -> uint8 pixels at the model's spec, or a client error that says what to fix.

Checks, in order, each giving a 4xx: no images (400), too many images (413), a file over the size
limit (413), not an image (415), more pixels than allowed (413), corrupt or unusable content such
as a wrong shape (422). Decoding and resizing are ``anomalymatch.decode``'s; nothing is re-implemented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalymatch.decode import decode_image, has_image_magic, probe_image, sniff_format
from anomalymatch.errors import DecodeError, ImageTooLargeError
from anomalymatch.preprocessing import PreprocessSpec

# BentoML stores each upload as tempfile.NamedTemporaryFile(suffix=<original name>): "tmp" + 8 random
# characters + the client's file name. The id we return is the client's file name.
_BENTO_TEMP_PREFIX = re.compile(r"^tmp[a-z0-9_]{8}")


@dataclass(frozen=True)
class UploadLimits:
    max_images: int
    max_bytes: int
    max_pixels: int


@dataclass
class RequestError(Exception):
    """A client error: HTTP ``status``, a message, and per-file details ``[{"id", "reason"}]``."""

    status: int
    message: str
    detail: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": self.message, "detail": self.detail}


_NOT_IMAGE_REASONS = ("unknown image format", "empty file")


def _not_an_image(name: str, reason: str) -> str:
    return f"{name}: not an image ({reason}); send PNG, JPEG, TIFF or FITS files"


def upload_id(path: Path) -> str:
    """The client's file name of a BentoML upload (falls back to the stored name)."""
    return _BENTO_TEMP_PREFIX.sub("", path.name) or path.name


def check_count(n: int, limits: UploadLimits) -> None:
    if n == 0:
        raise RequestError(400, "no images in the request: send one or more files in the multipart field 'images'")
    if n > limits.max_images:
        raise RequestError(
            413,
            f"too many images in one request: {n} > {limits.max_images}; split the request "
            "or use a bulk job (bulk_submit) for large sets",
        )


def decode_upload(name: str, data: bytes, spec: PreprocessSpec, limits: UploadLimits) -> np.ndarray:
    """One file's pixels, ``(size, size, 3)`` uint8, or ``RequestError``."""
    if len(data) > limits.max_bytes:
        raise RequestError(413, f"{name}: file too large ({len(data)} bytes > {limits.max_bytes})")
    try:
        if not has_image_magic(data[:16]):
            sniff_format(data, name)  # raises with the reason
    except DecodeError as exc:
        raise RequestError(415, _not_an_image(name, exc.reason)) from None
    try:
        info = probe_image(data, name, max_pixels=limits.max_pixels)
        pixels = int(np.prod(info.shape[:2])) if len(info.shape) >= 2 else 0
        if pixels > limits.max_pixels:
            raise RequestError(
                413,
                f"{name}: image too large ({' x '.join(map(str, info.shape))} = {pixels} pixels "
                f"> {limits.max_pixels}); downsample it first",
            )
        return decode_image(data, name, spec, max_pixels=limits.max_pixels)
    except ImageTooLargeError as exc:
        raise RequestError(413, f"{name}: image too large: {exc.reason}; downsample it first") from None
    except DecodeError as exc:
        if exc.reason.startswith(_NOT_IMAGE_REASONS):  # e.g. gzip around something else
            raise RequestError(415, _not_an_image(name, exc.reason)) from None
        raise RequestError(422, f"{name}: cannot use this image: {exc.reason}") from None


def decode_uploads(
    files: Sequence[tuple[str, Callable[[], bytes]]],
    spec: PreprocessSpec,
    limits: UploadLimits,
    pool: Executor | None = None,
) -> np.ndarray:
    """Decode every file (in ``pool`` when given); any failure fails the request, naming every bad file."""
    check_count(len(files), limits)

    def one(item: tuple[str, Callable[[], bytes]]) -> np.ndarray | RequestError:
        name, read = item
        try:
            return decode_upload(name, read(), spec, limits)
        except RequestError as exc:
            return exc

    results = list(pool.map(one, files)) if pool is not None and len(files) > 1 else [one(f) for f in files]
    errors = [r for r in results if isinstance(r, RequestError)]
    if errors:
        status = max(e.status for e in errors) if len({e.status for e in errors}) > 1 else errors[0].status
        what = errors[0].message if len(errors) == 1 else f"{len(errors)} of {len(files)} files are unusable"
        raise RequestError(
            status,
            what,
            [{"id": n, "reason": e.message} for (n, _), e in zip(files, results) if isinstance(e, RequestError)],
        )
    return np.stack(results)  # type: ignore[arg-type]


class RequestSizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the service reads it. With a
    Content-Length the header decides; a chunked body (no length) is read here first, counting, and
    handed on only when it stayed within the limit (BentoML would turn an error raised while it reads the
    body into a 500)."""

    def __init__(self, app, max_bytes: int) -> None:  # type: ignore[no-untyped-def]
        self.app, self.max_bytes = app, int(max_bytes)

    async def _reject(self, send, size: str) -> None:  # type: ignore[no-untyped-def]
        error = RequestError(
            413,
            f"request too large ({size} bytes > {self.max_bytes}); send fewer or smaller images per request, "
            "or use a bulk job",
        )
        await _send_json(send, error.status, error.body())

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await self._reject(send, length.decode())
            return await self.app(scope, receive, send)
        messages, within = await _read_body(receive, self.max_bytes)
        if not within:
            return await self._reject(send, f"over {self.max_bytes}")
        return await self.app(scope, _replay(messages, receive), send)


async def _read_body(receive, max_bytes: int) -> tuple[list, bool]:  # type: ignore[no-untyped-def]
    """The ASGI messages of a request body, read to its end (or a disconnect, which the app then sees),
    and whether it stayed within ``max_bytes`` (reading stops as soon as it does not)."""
    messages, seen = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, True
        seen += len(message.get("body", b""))
        if seen > max_bytes:
            return messages, False
        if not message.get("more_body", False):
            return messages, True


def _replay(messages: list, receive):  # type: ignore[no-untyped-def]
    """A ``receive`` that hands on the messages already read, then the live ones."""

    async def replay():  # type: ignore[no-untyped-def]
        return messages.pop(0) if messages else await receive()

    return replay


def _disposition(head: bytes) -> tuple[str, str] | None:
    """(field name, file name) from a multipart part's headers, parsed as e-mail headers do (parameters in
    any order, quoted or not, RFC 2231 ``filename*=``); None when the part has no Content-Disposition."""
    from email.parser import BytesHeaderParser

    headers = BytesHeaderParser().parsebytes(head.lstrip(b"\r\n") + b"\r\n\r\n")
    if headers.get("content-disposition") is None:
        return None
    name = headers.get_param("name", header="content-disposition") or ""
    filename = headers.get_filename() or ""
    return str(name), str(filename)


def check_multipart(body: bytes, boundary: bytes, field: str, max_filename: int) -> None:
    """``RequestError(400)`` for a multipart part under another field than ``field`` or with a file name
    longer than ``max_filename`` characters (BentoML would answer both with a 500)."""
    for part in body.split(b"--" + boundary)[1:]:
        found = _disposition(part.split(b"\r\n\r\n", 1)[0])
        if found is None:
            continue  # the closing delimiter, or a part without a disposition: the parser reports it
        name, filename = found
        if name != field:
            raise RequestError(400, f"unknown multipart field {name!r}: send the image files in the field {field!r}")
        if len(filename) > max_filename:
            raise RequestError(
                400, f"file name too long ({len(filename)} characters > {max_filename}): {filename[:40]}...; rename it"
            )


class MultipartCheck:
    """ASGI middleware for the multipart upload routes (``paths``): reads the body (at most ``max_bytes``:
    413 past that), answers 400 for a part under another field or an overlong file name, else hands the
    body on unchanged."""

    def __init__(  # type: ignore[no-untyped-def]
        self, app, max_bytes: int, paths: tuple[str, ...] = ("/score",), field: str = "images", max_filename: int = 200
    ) -> None:
        self.app, self.max_bytes, self.paths = app, int(max_bytes), paths
        self.field, self.max_filename = field, max_filename

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        content_type = headers.get(b"content-type", b"")
        boundary = re.search(rb'(?i)boundary="?([^";]+)"?', content_type)
        if scope["type"] != "http" or scope.get("path") not in self.paths or boundary is None:
            return await self.app(scope, receive, send)
        messages, within = await _read_body(receive, self.max_bytes)
        try:
            if not within:
                raise RequestError(413, f"request too large (over {self.max_bytes} bytes)")
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
            check_multipart(body, boundary.group(1), self.field, self.max_filename)
        except RequestError as exc:
            return await _send_json(send, exc.status, exc.body())
        return await self.app(scope, _replay(messages, receive), send)


async def _send_json(send, status: int, payload: dict) -> None:  # type: ignore[no-untyped-def]
    import json

    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

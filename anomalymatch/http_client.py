"""The HTTP plumbing both service clients share (``serving.client`` for scoring and bulk jobs,
``labeling.client`` for the labelling endpoints): the base URL, the timeout, the bearer token header,
JSON and multipart POSTs, and turning a 4xx or 5xx answer into ``ServiceError`` with the service's
message. Torch-free; httpx is imported when a client is made, not when this module is.

    with HttpClient("http://127.0.0.1:3000", token="...", timeout=60) as http:
        http.post_json("retrain_status")                  # the decoded body; ServiceError on 4xx/5xx
        http.post("labels", {...}, auth=True).content     # the response itself
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self


class ServiceError(RuntimeError):
    """The service refused a request: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, body: object) -> None:
        message = body.get("error", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.body = status, body


def read_body(resp: Any) -> object:
    """The response's JSON, or its text when it is not JSON."""
    try:
        return resp.json()
    except ValueError:
        return resp.text


def unwrap_error(body: object) -> object:
    """The error object of an error body: BentoML wraps some errors in a one-element list."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return body[0]
    return body


def raise_for_status(resp: Any) -> Any:
    """``resp`` itself when it succeeded; ``ServiceError`` (status and the service's message) on 4xx/5xx."""
    if resp.status_code >= 400:
        raise ServiceError(resp.status_code, unwrap_error(read_body(resp)))
    return resp


def check(resp: Any) -> object:
    """The decoded body of a successful response (JSON, else text); ``ServiceError`` on 4xx/5xx."""
    return read_body(raise_for_status(resp))


def bearer_header(token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}``, or no header when there is no token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class HttpClient:
    """POSTs to the service at ``url`` (a trailing slash is dropped) over one connection pool;
    ``token`` (a user's, or the shared one) is sent as a bearer token with every request: the service
    checks the role each endpoint needs. Thread-safe: one client may post from several threads at once."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.token = token or ""
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(
        self, route: str, payload: Mapping[str, Any] | None = None, *, auth: bool = False, files: Any = None
    ) -> Any:
        """POST ``payload`` as JSON (or ``files`` as multipart) to ``<url>/<route>``; returns the response,
        raises ``ServiceError`` on 4xx/5xx."""
        headers = bearer_header(self.token) if (auth or self.token) else {}
        if files is not None:
            resp = self._http.post(f"{self.url}/{route}", files=files, headers=headers)
        else:
            resp = self._http.post(f"{self.url}/{route}", json=dict(payload or {}), headers=headers)
        return raise_for_status(resp)

    def post_json(
        self, route: str, payload: Mapping[str, Any] | None = None, *, auth: bool = False, files: Any = None
    ) -> Any:
        """Like ``post``, returning the decoded body."""
        return read_body(self.post(route, payload, auth=auth, files=files))


def post_json(
    url: str,
    route: str,
    payload: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    token: str | None = None,
    auth: bool = False,
) -> Any:
    """One JSON POST on a connection of its own; returns the decoded body, ``ServiceError`` on 4xx/5xx."""
    with HttpClient(url, token, timeout) as http:
        return http.post_json(route, payload, auth=auth)

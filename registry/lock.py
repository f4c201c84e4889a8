"""An exclusive lock on a registered model's aliases, held in the MLflow store itself.

MLflow has no transactions over aliases. What it does have is a uniqueness constraint on registered
model names: ``create_registered_model`` of an existing name fails with RESOURCE_ALREADY_EXISTS on the
SQL store (primary key) and through ``mlflow server`` alike. So the lock is a registered model named
``<name>.promotion-lock``: creating it acquires, deleting it releases. It works for every process and
machine that talks to the same store. A lock older than ``stale_after`` seconds (its holder crashed) is
broken after re-checking that it is still the same holder's."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator

LOCK_SUFFIX = ".promotion-lock"
TOKEN_TAG = "anomalymatch.lock_token"
OWNER_TAG = "anomalymatch.lock_owner"
SINCE_TAG = "anomalymatch.lock_since"


class LockTimeout(TimeoutError):
    pass


def lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def _read_lock(client, lock: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(lock).tags)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _delete_if_token(client, lock: str, token: str) -> None:
    from mlflow.exceptions import MlflowException

    tags = _read_lock(client, lock)
    if tags is not None and tags.get(TOKEN_TAG) == token:
        try:
            client.delete_registered_model(lock)
        except MlflowException as exc:
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise


@contextlib.contextmanager
def hold_promotion_lock(
    client, name: str, timeout: float = 60.0, stale_after: float = 600.0, poll: float = 0.05
) -> Iterator[str]:
    """Hold the alias lock of registered model ``name`` for the ``with`` block; yields the lock token.

    Raises ``LockTimeout`` after ``timeout`` seconds of waiting, naming the holder."""
    from mlflow.exceptions import MlflowException

    lock = lock_name(name)
    token = uuid.uuid4().hex
    tags = {TOKEN_TAG: token, OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}", SINCE_TAG: f"{time.time():.3f}"}
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(lock, tags=tags, description=f"promotion lock of '{name}' (transient)")
            break
        except MlflowException as exc:
            # taken; or released between the failed insert and the SQL store's follow-up read of it
            if _error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        held = _read_lock(client, lock)
        if held is not None and time.time() - float(held.get(SINCE_TAG, "0") or 0) > stale_after:
            _delete_if_token(client, lock, held.get(TOKEN_TAG, ""))  # the holder died: break its lock
            continue
        if time.monotonic() > deadline:
            owner = (held or {}).get(OWNER_TAG, "unknown")
            raise LockTimeout(
                f"registered model '{name}' is locked by {owner} (registered model '{lock}') for "
                f"more than {timeout:.0f} s; if that process is gone, delete '{lock}' in MLflow"
            )
        time.sleep(poll * (1.0 + uuid.uuid4().int % 100 / 100.0))
    try:
        yield token
    finally:
        _delete_if_token(client, lock, token)

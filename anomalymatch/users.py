"""People who may use the service, each with a personal token and a role; the service only checks them.

Roles are ordered: ``viewer`` (read candidates and images) < ``labeller`` (also post labels) <
``admin`` (also bulk jobs). A token is shown once, when the user is added; the label store keeps only
its SHA-256, so a stolen database does not hand out working tokens. The shared token of
``labelstore.token_env`` / ``token_file`` keeps working as one admin (``SHARED_USER``), so deployments
from before per-user tokens do not break.

``authorize`` is the whole policy: with no user in the store and no shared token the service is in
open mode (reads and bulk jobs need no token, label writes are refused); as soon as either exists,
every labelling and bulk-job endpoint needs a token of the role it names (``/score``, ``/info`` and
the health checks stay open).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import sqlalchemy as sa

from anomalymatch.labelstore import LabelStore, LabelStoreError, _users

SHARED_USER = "shared-token"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,199}$")


class Role(str, Enum):
    VIEWER = "viewer"
    LABELLER = "labeller"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


@dataclass(frozen=True)
class User:
    name: str
    role: Role

    def can(self, needed: Role) -> bool:
        return self.role.rank >= needed.rank


class AuthError(Exception):
    """Why a request may not proceed: ``status`` 401 (no or unknown token) or 403 (role too low, or
    label writes disabled)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(store: LabelStore, name: str, role: Role | str) -> str:
    """Add ``name`` with ``role``; returns the new token (shown once: only its hash is stored)."""
    if not _NAME.match(name or "") or name == SHARED_USER:
        raise LabelStoreError(
            f"user name {name!r}: use 1-200 letters, digits, '.', '_', '@' or '-' (and not {SHARED_USER!r})"
        )
    role = Role(role)
    token = secrets.token_urlsafe(32)
    row = {"name": name, "role": role.value, "token_sha256": token_sha256(token), "created_at": _now()}

    def work(conn: sa.Connection) -> bool:  # RETURNING, not rowcount: PostgreSQL reports -1 for this insert
        stmt = store._insert(_users).values(**row).on_conflict_do_nothing().returning(_users.c.name)
        return conn.execute(stmt).first() is not None

    if not store._transact(work):
        raise LabelStoreError(f"user {name!r} exists; remove it first to issue a new token")
    return token


def remove_user(store: LabelStore, name: str) -> None:
    def work(conn: sa.Connection) -> int:
        return conn.execute(sa.delete(_users).where(_users.c.name == name)).rowcount

    if not store._transact(work):
        raise LabelStoreError(f"no user {name!r}; see `anomalymatch users list`")


def list_users(store: LabelStore) -> list[tuple[User, str]]:
    """Every user with when it was added, by name."""
    with store._read() as conn:
        rows = conn.execute(sa.select(_users).order_by(_users.c.name)).all()
    return [(User(r.name, Role(r.role)), r.created_at) for r in rows]


def authenticate(store: LabelStore, token: str) -> User | None:
    """The user whose token this is, or None."""
    if not token:
        return None
    with store._read() as conn:
        row = conn.execute(sa.select(_users).where(_users.c.token_sha256 == token_sha256(token))).first()
    return User(row.name, Role(row.role)) if row is not None else None


def has_users(store: LabelStore) -> bool:
    with store._read() as conn:
        return conn.execute(sa.select(_users.c.name).limit(1)).first() is not None


def authorize(store: LabelStore, token: str, shared_token: str, needed: Role) -> User | None:
    """The user a request acts as, if its bearer ``token`` grants ``needed``; ``AuthError`` otherwise.
    None in open mode (no users, no shared token) for reads and bulk jobs; label writes always need a user."""
    user = authenticate(store, token)
    if user is None and shared_token and token and hmac.compare_digest(token.encode(), shared_token.encode()):
        user = User(SHARED_USER, Role.ADMIN)
    if user is not None:
        if not user.can(needed):
            raise AuthError(403, f"user {user.name!r} is a {user.role.value}; this needs the {needed.value} role")
        return user
    if has_users(store) or shared_token:
        if token:
            raise AuthError(401, "unknown token: send 'Authorization: Bearer <your token>'")
        raise AuthError(401, f"this needs a token with the {needed.value} role: send 'Authorization: Bearer <token>'")
    if needed is Role.LABELLER:
        raise AuthError(403, "label writes are disabled: the service has no users and no write token")
    return None  # open mode: a token, if sent, is not needed and not checked


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

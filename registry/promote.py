"""Promotion and rollback: one alias move under the registry lock, verified after the move.

``champion`` is the served version, ``previous`` the champion it replaced (where ``rollback`` goes),
``challenger`` the latest version that passed parity. Each promoted version records the champion it
replaced (``replaced_version``), so rollbacks can walk back more than one step."""

from __future__ import annotations

import time
from dataclasses import dataclass

from registry.store import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_NAME,
    FORCED,
    GATE,
    GATE_REASON,
    GATE_VS,
    PARITY,
    PARITY_DETAIL,
    PASSED,
    PREVIOUS,
    PROMOTED_AT,
    PROMOTION_REASON,
    REPLACED,
    ROLLED_BACK_AT,
    get_aliases,
    get_version,
    mlflow_client,
)

GATE_OK = ("passed", "no_champion")


class PromotionError(RuntimeError):
    """A promotion that the parity check or the gate forbids, or a rollback with nowhere to go."""


@dataclass(frozen=True)
class AliasMove:
    champion: str  # the champion after the move
    previous: str  # the `previous` alias after the move ("" if none)
    replaced: str  # the champion before the move ("" if none)
    changed: bool


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _verify(client, name: str, champion: str, previous: str) -> None:
    aliases = get_aliases(client, name)
    if aliases.get(CHAMPION) != champion or aliases.get(PREVIOUS, "") != previous:
        raise RuntimeError(
            f"alias move on '{name}' not as written: expected champion={champion} "
            f"previous={previous or '-'}, found {aliases}; another client wrote aliases without the "
            "promotion lock"
        )


def check_promotable(mv, current: str | None, force: bool) -> None:
    """Raise PromotionError unless version ``mv`` may become champion over ``current``."""
    tags = mv.tags or {}
    if tags.get(PARITY) != PASSED:
        raise PromotionError(
            f"version {mv.version} failed the torch-vs-ONNX parity check "
            f"({tags.get(PARITY_DETAIL, tags.get(PARITY, 'not checked'))}); it can never be promoted, "
            "not even with --force"
        )
    if force:
        return
    gate, gate_vs = tags.get(GATE, "not evaluated"), tags.get(GATE_VS, "")
    if gate not in GATE_OK:
        raise PromotionError(
            f"version {mv.version} did not pass the gate against version {gate_vs or '-'}: "
            f"{gate} ({tags.get(GATE_REASON, '')}); promote anyway with --force --reason TEXT"
        )
    if (gate_vs or None) != current:
        raise PromotionError(
            f"version {mv.version}'s gate was evaluated against "
            f"{'version ' + gate_vs if gate_vs else 'no champion'}, but the champion is now "
            f"{current}; register a new cycle or promote with --force --reason TEXT"
        )


def move_champion_locked(client, name: str, version: str, reason: str, forced: bool) -> AliasMove:
    """previous := champion, champion := ``version``. Call only while holding the promotion lock."""
    current = get_aliases(client, name).get(CHAMPION)
    if current == version:
        return AliasMove(version, get_aliases(client, name).get(PREVIOUS, ""), version, False)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current)
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in {
        PROMOTED_AT: _now(),
        PROMOTION_REASON: reason or "gate passed",
        FORCED: str(forced).lower(),
        REPLACED: current or "",
    }.items():
        client.set_model_version_tag(name, version, key, value)
    _verify(client, name, version, current or "")
    return AliasMove(version, current or "", current or "", True)


def promote_to_champion(
    version: str | int,
    tracking_uri: str | None = None,
    name: str = DEFAULT_NAME,
    force: bool = False,
    reason: str = "",
    lock_timeout: float = 60.0,
) -> AliasMove:
    """Make ``version`` the champion if it passed parity and the gate against the current champion
    (``force`` skips the gate, never parity, and needs a ``reason``, which is recorded)."""
    from registry.lock import hold_promotion_lock

    version = str(version)
    if force and not reason.strip():
        raise ValueError("--force needs --reason TEXT: the reason is recorded on the version")
    client = mlflow_client(tracking_uri)
    mv = get_version(client, name, version)
    check_promotable(mv, None, force=True)  # parity first: fails fast without taking the lock
    with hold_promotion_lock(client, name, lock_timeout):
        current = get_aliases(client, name).get(CHAMPION)
        if current == version:
            return AliasMove(version, get_aliases(client, name).get(PREVIOUS, ""), version, False)
        check_promotable(get_version(client, name, version), current, force)
        return move_champion_locked(client, name, version, reason if force else (reason or "gate passed"), force)


def rollback_champion(
    tracking_uri: str | None = None, name: str = DEFAULT_NAME, reason: str = "", lock_timeout: float = 60.0
) -> AliasMove:
    """champion := previous; previous := the champion that one had replaced (if it still exists)."""
    from mlflow.exceptions import MlflowException

    from registry.lock import hold_promotion_lock

    client = mlflow_client(tracking_uri)
    with hold_promotion_lock(client, name, lock_timeout):
        aliases = get_aliases(client, name)
        current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if previous is None or previous == current:
            raise PromotionError(f"'{name}' has no previous champion to roll back to (champion {current or '-'})")
        target = get_version(client, name, previous)
        before = (target.tags or {}).get(REPLACED, "")
        if before:
            try:
                client.get_model_version(name, before)
            except MlflowException:
                before = ""
        client.set_registered_model_alias(name, CHAMPION, previous)
        if before and before != previous:
            client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
            before = ""
        if current is not None:
            client.set_model_version_tag(name, current, ROLLED_BACK_AT, f"{_now()} {reason}".strip())
        _verify(client, name, previous, before)
        return AliasMove(previous, before, current or "", True)


def move_challenger_locked(client, name: str, version: str) -> bool:
    """challenger := ``version`` unless a newer version holds it. Call while holding the lock."""
    current = get_aliases(client, name).get(CHALLENGER)
    if current is not None and int(current) > int(version):
        return False
    client.set_registered_model_alias(name, CHALLENGER, version)
    return True

"""The continuous-retraining state: one small JSON file, written atomically by the watcher, read by the
service and the CLI. Also the one rule for "is a retrain due": ``min_labels`` new labels, or the oldest
new label has waited ``max_wait_minutes``.

Statuses: ``idle`` (nothing due), ``queued`` (a retrain is due and starts at the watcher's next poll, or
after the running one), ``running``, ``failed`` (the last retrain failed; the champion kept serving; the
next new label queues another try). No torch, no mlflow: the service imports this.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from anomalymatch.config import RetrainConfig
from anomalymatch.labelstore import LabelStore

STATE_FILE = "state.json"


class RetrainStatus(str, Enum):
    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"
    FAILED = "failed"


@dataclass
class RetrainState:
    """What the watcher records. ``trained_seq``: the label sequence number the last successful retrain
    included; ``attempted_seq``: that of the last attempt, failed or not."""

    status: str = RetrainStatus.IDLE.value  # idle / running / failed as last written by the watcher
    trained_seq: int = 0
    attempted_seq: int = 0
    last_version: str = ""
    last_promoted: bool = False
    last_gate: str = ""
    last_reason: str = ""
    last_error: str = ""
    last_run_id: str = ""
    started_at: str = ""
    finished_at: str = ""
    runs: int = 0
    failures: int = 0
    pid: int = 0
    host: str = ""
    watcher_seen_at: str = ""
    trained_champion: bool = False  # the champion is a trained model (not none, not a cold-start ranking)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def state_path(data_dir: str | os.PathLike) -> Path:
    """Where the watcher of the project in ``data_dir`` keeps its state."""
    return Path(data_dir).expanduser().resolve() / "retrain" / STATE_FILE


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_state(path: str | os.PathLike) -> RetrainState:
    """The recorded state (defaults when no watcher has written one yet)."""
    path = Path(path)
    if not path.is_file():
        return RetrainState()
    raw = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(RetrainState)}
    return RetrainState(**{k: v for k, v in raw.items() if k in known})


def write_state(path: str | os.PathLike, state: RetrainState) -> None:
    """Write atomically (temp file in the same folder, fsync, rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(state.to_dict(), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def retrain_due(n_new: int, oldest_wait_s: float, min_labels: int, max_wait_minutes: float) -> str:
    """Why a retrain is due ('' = not due): enough new labels, or the oldest one waited long enough."""
    if n_new >= min_labels:
        return f"{n_new} new labels (>= {min_labels})"
    if n_new >= 1 and max_wait_minutes > 0 and oldest_wait_s >= max_wait_minutes * 60:
        return f"{n_new} new label(s), the oldest waiting {oldest_wait_s / 60:.1f} min (>= {max_wait_minutes:g})"
    return ""


def _alive(state: RetrainState) -> bool:
    """Whether the process that wrote ``running`` still exists (assumed so on another host)."""
    if not state.pid or state.host != socket.gethostname():
        return True
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pending(store: LabelStore, after_seq: int, now: datetime | None = None) -> tuple[int, float]:
    """(labels stored after ``after_seq``, seconds the oldest of them has waited)."""
    n, oldest = store.pending_since(after_seq)
    if oldest is None:
        return 0, 0.0
    return n, ((now or datetime.now(UTC)) - oldest).total_seconds()


def evaluate(state: RetrainState, store: LabelStore, cfg: RetrainConfig, now: datetime | None = None) -> dict[str, Any]:
    """The status as the service and the CLI report it, plus ``due`` (why a retrain should start, or '')."""
    n_new, waited = pending(store, state.trained_seq, now)
    due = retrain_due(n_new, waited, cfg.min_labels, cfg.max_wait_minutes)
    waiting_for_anomalies = False
    if due and not state.trained_champion:  # cold start: FixMatch needs a few anomalies to start from
        # counted only then: the status is polled often and the count reads every current label
        waiting_for_anomalies = store.label_counts()["anomalies"] < cfg.min_anomalies
        due = "" if waiting_for_anomalies else due
    error = state.last_error
    recorded = state.status
    if recorded == RetrainStatus.RUNNING.value and not _alive(state):
        recorded, error = RetrainStatus.FAILED.value, f"the retrain process {state.pid} ended during the run"
    if recorded == RetrainStatus.FAILED.value and store.last_seq() <= state.attempted_seq:
        due = ""  # a failed attempt is retried only when new labels arrive (or with --force)
    queued_next = False
    if recorded == RetrainStatus.RUNNING.value:
        status = RetrainStatus.RUNNING
        # the run includes labels up to attempted_seq: only later ones can make the next run due
        queued_next = bool(retrain_due(*pending(store, state.attempted_seq, now), cfg.min_labels, cfg.max_wait_minutes))
    elif due:
        status = RetrainStatus.QUEUED
    elif recorded == RetrainStatus.FAILED.value:
        status = RetrainStatus.FAILED
    else:
        status = RetrainStatus.IDLE
    return {
        "status": status.value,
        "due": due,
        "queued_next": queued_next,
        "new_labels": n_new,
        "oldest_new_label_waited_s": round(waited, 1),
        "min_labels": cfg.min_labels,
        "min_anomalies": cfg.min_anomalies,
        "waiting_for_anomalies": waiting_for_anomalies,
        "max_wait_minutes": cfg.max_wait_minutes,
        "last_version": state.last_version,
        "last_promoted": state.last_promoted,
        "last_gate": state.last_gate,
        "last_reason": state.last_reason,
        "last_error": error if status is RetrainStatus.FAILED or recorded == RetrainStatus.FAILED.value else "",
        "last_run_id": state.last_run_id,
        "trained_seq": state.trained_seq,
        "label_seq": store.last_seq(),
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "runs": state.runs,
        "failures": state.failures,
        "watcher_seen_at": state.watcher_seen_at,
    }

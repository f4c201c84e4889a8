"""MLflow tracking of training: one parent run per training run (``anomalymatch train``, one retrain, one
benchmark seed), one nested run per cycle, with the labels used (CSV artifact + SHA-256 tag), the pool
sample, candidates, per-iteration losses, metrics, plots, timings and the model weights with their preprocessing spec.

Embedded default: a SQLite store and local artifacts under the project data folder. Any tracking
URI can be given by config or the ``MLFLOW_TRACKING_URI`` environment variable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalymatch.config import TrackingConfig
from anomalymatch.model_ref import resolve_tracking_uri

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _mlflow():
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("MLflow is needed for tracking: pip install 'mlflow>=3.4,<4'") from exc
    return mlflow


def ensure_experiment(name: str, tracking_uri: str, data_dir: Path) -> str:
    """Create (or find) the experiment; on a local store its artifacts live under ``data_dir``."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:"):
        artifact_location = (data_dir / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunTracker:
    """Wraps one training run's MLflow parent run and its nested cycle runs. (A *campaign* is the user's
    named search: its label-store row, its image sources and labels; the parent run records one training
    run of it; the parent run's tag ``anomalymatch.kind`` keeps the value "campaign" for older stores.)"""

    def __init__(self, tracking: TrackingConfig, data_dir: Path) -> None:
        self.mlflow = _mlflow()
        self.tracking_uri = resolve_tracking_uri(tracking.tracking_uri, data_dir)
        self.client = self.mlflow.MlflowClient(self.tracking_uri)
        self.experiment_id = ensure_experiment(tracking.experiment, self.tracking_uri, data_dir)
        self.parent_run_id: str | None = None
        self.cycle_run_id: str | None = None
        self._pending: list = []

    # -- runs -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def parent_run(self, name: str, config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Iterator[str]:
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={"anomalymatch.kind": "campaign", **(tags or {})}
        )
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, flatten(config))
        self.log_dict(self.parent_run_id, dict(config), "config.json")
        status = "FAILED"
        try:
            yield self.parent_run_id
            status = "FINISHED"
        finally:
            self.client.set_terminated(self.parent_run_id, status)

    @contextlib.contextmanager
    def cycle(self, cycle: int, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        if self.parent_run_id is None:
            raise RuntimeError("open a parent run (RunTracker.parent_run) before a cycle")
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"cycle-{cycle}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "anomalymatch.kind": "cycle",
                "anomalymatch.cycle": str(cycle),
                **(tags or {}),
            },
        )
        self.cycle_run_id = run.info.run_id
        status = "FAILED"
        try:
            yield self.cycle_run_id
            self.flush()
            status = "FINISHED"
        finally:
            self.client.set_terminated(self.cycle_run_id, status)
            self.cycle_run_id = None

    # -- logging helpers ------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Buffered per-iteration metrics, sent in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in values.items())
        if len(self._pending) >= 500:
            self.flush()

    def flush(self) -> None:
        if self._pending and self.cycle_run_id:
            for start in range(0, len(self._pending), 1000):
                self.client.log_batch(self.cycle_run_id, metrics=self._pending[start : start + 1000])
        self._pending = []

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and np.isfinite(v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        path = Path(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / path.name
            local.write_bytes(data)
            self.client.log_artifact(
                run_id, str(local), artifact_path=str(path.parent) if str(path.parent) != "." else None
            )

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.log_bytes(run_id, json.dumps(data, indent=2, sort_keys=True, default=str).encode(), artifact_file)

    def log_file(self, run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path=artifact_path)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        self.log_bytes(run_id, buf.getvalue(), artifact_file)

    def log_lines(self, run_id: str, lines: Sequence[str], artifact_file: str) -> None:
        self.log_bytes(run_id, ("\n".join(lines) + "\n").encode(), artifact_file)

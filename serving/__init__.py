"""AnomalyMatch serving: the BentoML scoring service, the resumable bulk scoring engine and helpers to
start the service and score through it. Torch-free.

Public names are re-exported lazily (PEP 562) so that importing ``serving.cli_serve`` to build the
command line does not load onnxruntime, mlflow or bentoml.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AdaptiveBatcher": "serving.batching",
    "BulkJob": "serving.bulk",
    "BulkProgress": "serving.bulk",
    "JobMismatch": "serving.bulk",
    "read_manifest": "serving.bulk",
    "read_scores": "serving.bulk",
    "LiveModel": "serving.live_model",
    "ModelRef": "anomalymatch.model_ref",
    "ResolvedModel": "anomalymatch.model_ref",
    "parse_model_ref": "anomalymatch.model_ref",
    "resolve_model": "anomalymatch.model_ref",
    "RunningService": "serving.launch",
    "start_service": "serving.launch",
    "ServiceError": "serving.client",
    "score_files": "serving.client",
    "score_bytes": "serving.client",
    "score_arrays": "serving.client",
    "submit_bulk": "serving.client",
    "bulk_status": "serving.client",
    "cancel_bulk": "serving.client",
    "wait_bulk": "serving.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

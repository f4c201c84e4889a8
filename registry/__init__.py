"""AnomalyMatch model registry: versions with lineage, ONNX export and parity, the promotion gate,
aliases ``champion``/``challenger``/``previous`` and rollback.

Public names are re-exported lazily (PEP 562): importing ``registry`` pulls in neither torch nor mlflow."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "export_onnx": "registry.onnx_export",
    "select_holdout": "registry.holdout",
    "holdout_position": "registry.holdout",
    "GateDecision": "registry.gate",
    "GateResult": "registry.gate",
    "evaluate_gate": "registry.gate",
    "holdout_metrics": "registry.gate",
    "ParityResult": "registry.parity",
    "check_parity": "registry.parity",
    "compare_scores": "registry.parity",
    "LockTimeout": "registry.lock",
    "hold_promotion_lock": "registry.lock",
    "AliasMove": "registry.promote",
    "PromotionError": "registry.promote",
    "promote_to_champion": "registry.promote",
    "rollback_champion": "registry.promote",
    "ImageSet": "registry.register",
    "Registration": "registry.register",
    "register_cycle": "registry.register",
    "ResolvedModel": "anomalymatch.model_ref",
    "VersionInfo": "registry.store",
    "list_versions": "registry.store",
    "show_version": "registry.store",
    "resolve_model": "anomalymatch.model_ref",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

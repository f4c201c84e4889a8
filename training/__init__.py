"""AnomalyMatch training.

Public names are re-exported lazily (PEP 562) so that importing a CLI verb module such as
``training.cli_train`` does not pull in torch before the verb runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # model
    "AnomalyNet": "training.model",
    "Normalize": "training.model",
    "create_model": "training.model",
    "save_weights": "training.model",
    "load_weights": "training.model",
    "load_model": "training.model",
    "read_weights_metadata": "training.model",
    # offline ImageNet weights
    "WeightMappingError": "training.pretrained",
    "map_lite0_key": "training.pretrained",
    "map_lite0_state_dict": "training.pretrained",
    "check_state_dict_matches": "training.pretrained",
    "lite0_weight_path": "training.pretrained",
    "load_lite0_checkpoint": "training.pretrained",
    "load_imagenet_weights": "training.pretrained",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

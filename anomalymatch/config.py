"""Typed configuration: frozen dataclasses per component, YAML defaults, command-line overrides.

Config flows one way: ``load_config(yaml_path, overrides)`` -> ``AppConfig`` -> each function gets only
the fields it needs. The resolved config is logged with every run (``AppConfig.to_dict``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from anomalymatch.preprocessing import PreprocessSpec

DATA_DIR_ENV = "ANOMALYMATCH_HOME"


@dataclass(frozen=True)
class FixMatchConfig:
    """FixMatch hyper-parameters; defaults are the AnomalyMatch paper's."""

    batch_size: int = 16
    uratio: int = 5
    threshold: float = 0.95
    lambda_u: float = 1.0
    lr: float = 0.0075
    momentum: float = 0.9
    weight_decay: float = 7.5e-4
    nesterov: bool = True
    ema_decay: float = 0.99
    oversample: bool = True
    hflip: bool = True
    vflip: bool = True
    translate: float = 0.125
    n_ops: int = 2
    cutout: float = 0.5
    channels_last: bool = True
    threads: int = 0  # torch intra-op threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.uratio < 0:
            raise ValueError("fixmatch.batch_size must be >= 1 and fixmatch.uratio >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"fixmatch.threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"fixmatch.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ValueError(f"fixmatch.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class CycleConfig:
    """One active-learning cycle: train, score the pool, pick candidates."""

    iterations: int = 100
    cycles: int = 1
    picks: int = 10
    top_candidates: int = 100
    pool_sample: int = 20_000  # unlabelled images held in memory for training; 0 = the whole pool
    score_batch_size: int = 256
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.cycles < 1:
            raise ValueError("cycle.iterations must be >= 0 and cycle.cycles >= 1")
        if self.picks < 0 or self.top_candidates < 1:
            raise ValueError("cycle.picks must be >= 0 and cycle.top_candidates >= 1")


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs and models go. ``tracking_uri`` None = embedded SQLite store under the data folder;
    the MLFLOW_TRACKING_URI environment variable overrides the embedded default."""

    tracking_uri: str | None = None
    experiment: str = "anomalymatch"
    registered_model: str = "anomalymatch"


@dataclass(frozen=True)
class AppConfig:
    data_dir: str = ".anomalymatch"
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    workers: int = 0  # decode threads; 0 = one per CPU core

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "workers": self.workers,
            "preprocess": self.preprocess.to_dict(),
            "fixmatch": dataclasses.asdict(self.fixmatch),
            "cycle": dataclasses.asdict(self.cycle),
            "tracking": dataclasses.asdict(self.tracking),
        }

    def config_hash(self) -> str:
        """SHA-256 of the resolved config minus where things are stored (same recipe, same hash)."""
        d = self.to_dict()
        d.pop("data_dir")
        d.pop("tracking")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def replace(self, **sections: Any) -> "AppConfig":
        return dataclasses.replace(self, **sections)


_SECTIONS = {
    "preprocess": PreprocessSpec,
    "fixmatch": FixMatchConfig,
    "cycle": CycleConfig,
    "tracking": TrackingConfig,
}


def config_from_dict(raw: Mapping[str, Any]) -> AppConfig:
    """Build an AppConfig from nested dicts, rejecting unknown keys with the list of valid ones."""
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            cls = _SECTIONS[key]
            if not isinstance(value, Mapping):
                raise ValueError(f"config section '{key}' must be a mapping, got {type(value).__name__}")
            valid = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - valid)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} in config section '{key}'; valid: {sorted(valid)}")
            kwargs[key] = PreprocessSpec.from_dict(dict(value)) if cls is PreprocessSpec else cls(**value)
        elif key in ("data_dir", "workers"):
            kwargs[key] = value
        else:
            raise ValueError(f"unknown config key '{key}'; valid: {sorted([*_SECTIONS, 'data_dir', 'workers'])}")
    return AppConfig(**kwargs)


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> AppConfig:
    """Defaults <- YAML file <- overrides (dotted keys such as ``"cycle.iterations"`` or nested dicts).

    ``ANOMALYMATCH_HOME`` sets the default data folder.
    """
    raw: dict[str, Any] = AppConfig().to_dict()
    if os.environ.get(DATA_DIR_ENV):
        raw["data_dir"] = os.environ[DATA_DIR_ENV]
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        with p.open() as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"config file {p} must hold a mapping at the top level")
        raw = _deep_merge(raw, loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            raw = _deep_merge(raw, {key: value})
            continue
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config_from_dict(raw)

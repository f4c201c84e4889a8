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
    ema_warmup: bool = False  # decay min(ema_decay, (1 + t) / (10 + t)) at step t: the EMA follows early training
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
    score_batch_size: int = 0  # 0 = auto: 64 in ONNX Runtime on a CPU, 256 on a GPU
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.cycles < 1:
            raise ValueError("cycle.iterations must be >= 0 and cycle.cycles >= 1")
        if self.picks < 0 or self.top_candidates < 1:
            raise ValueError("cycle.picks must be >= 0 and cycle.top_candidates >= 1")
        if self.score_batch_size < 0:
            raise ValueError(f"cycle.score_batch_size must be >= 0 (0 = auto), got {self.score_batch_size}")


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs and models go. ``tracking_uri`` None = embedded SQLite store under the data folder;
    the MLFLOW_TRACKING_URI environment variable overrides the embedded default."""

    tracking_uri: str | None = None
    experiment: str = "anomalymatch"
    registered_model: str = "anomalymatch"


@dataclass(frozen=True)
class RegistryConfig:
    """Model registry: every cycle registers a version; parity and the metric gate decide promotion.

    ``holdout_fraction`` of the labelled images (chosen by a hash of the image id, so the slice stays
    fixed across cycles) is never trained on and is where challenger and champion are compared. A
    challenger is promoted only if its AUPRC and its precision at the top (R-precision: precision among
    the top ``n anomalies`` of the evaluation set) are not worse than the champion's by more than the
    tolerances, on at least ``gate_min_anomalies`` held-out anomalies; or, with ``gate_confidence`` > 0,
    if it is worse beyond them in fewer than that share of paired bootstrap resamples (0 = the point
    estimates alone decide)."""

    enabled: bool = True
    auto_promote: bool = True
    holdout_fraction: float = 0.2
    gate_auprc_tolerance: float = 0.02
    gate_precision_tolerance: float = 0.05
    gate_min_anomalies: int = 1
    gate_confidence: float = 0.9
    parity_tolerance: float = 1e-4
    parity_top_k: int = 100
    parity_sample: int = 1000  # pool images scored by torch and ONNX for the parity check; 0 = all
    lock_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gate_confidence < 1.0:
            raise ValueError(f"registry.gate_confidence must be in [0, 1), got {self.gate_confidence}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"registry.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if min(self.gate_auprc_tolerance, self.gate_precision_tolerance, self.parity_tolerance) < 0:
            raise ValueError("registry tolerances must be >= 0")
        if self.parity_top_k < 1 or self.parity_sample < 0 or self.gate_min_anomalies < 1:
            raise ValueError("registry.parity_top_k and gate_min_anomalies must be >= 1, parity_sample >= 0")


@dataclass(frozen=True)
class ServingConfig:
    """The scoring service and bulk scoring jobs.

    model: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, a version number of
    ``tracking.registered_model``, or a local ``.onnx`` file. batching off scores each request on its
    own; on, concurrent requests are merged into batches of up to ``max_batch_size`` images, waiting at
    most ``max_latency_ms`` for requests that are already being decoded. ``max_upload_bytes`` bounds a
    whole request body (all its files) and so each file. ``data_roots``: the only
    folders bulk jobs submitted to the service may read (none = bulk jobs refused).
    ``reload_interval_s``: how often the service checks whether the alias moved (0 = never).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    model: str = "models:/anomalymatch@champion"
    batching: bool = True
    max_batch_size: int = 64
    max_latency_ms: float = 10.0
    max_upload_bytes: int = 32 * 1024 * 1024
    max_images_per_request: int = 256
    max_image_pixels: int = 64_000_000
    data_roots: tuple[str, ...] = ()
    reload_interval_s: float = 30.0
    decode_workers: int = 0  # 0 = one per CPU
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = its default
    providers: tuple[str, ...] = ()  # empty = CUDA then CPU, whichever this onnxruntime offers
    bulk_batch_size: int = 256
    bulk_workers: int = 0  # decoding threads for bulk jobs; 0 = one per CPU
    bulk_shard_rows: int = 65_536
    top_n: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_roots", tuple(str(r) for r in self.data_roots))
        object.__setattr__(self, "providers", tuple(str(p) for p in self.providers))
        if self.max_batch_size < 1 or self.max_latency_ms < 0:
            raise ValueError("serving.max_batch_size must be >= 1 and serving.max_latency_ms >= 0")
        if min(self.max_upload_bytes, self.max_images_per_request, self.max_image_pixels) < 1:
            raise ValueError("serving.max_upload_bytes, max_images_per_request and max_image_pixels must be >= 1")
        if self.bulk_batch_size < 1 or self.bulk_shard_rows < 1 or self.top_n < 0:
            raise ValueError("serving.bulk_batch_size and bulk_shard_rows must be >= 1, serving.top_n >= 0")
        if not 0 <= self.port < 65536:
            raise ValueError(f"serving.port must be in 0..65535 (0: any free port), got {self.port}")


@dataclass(frozen=True)
class LabelStoreConfig:
    """The label store (anomalymatch.labelstore). ``url`` None = SQLite at ``<data_dir>/labels.db``; else a
    SQLAlchemy URL such as ``postgresql+psycopg://user:pass@host/db``. ``busy_timeout_s``: how long a writer
    waits for another writer's lock before giving up."""

    url: str | None = None
    busy_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.busy_timeout_s < 0:
            raise ValueError(f"labelstore.busy_timeout_s must be >= 0, got {self.busy_timeout_s}")


@dataclass(frozen=True)
class RetrainConfig:
    """Continuous retraining (``anomalymatch retrain --watch``) and the label endpoints.

    A retrain starts once ``min_labels`` new labels arrived, or once the oldest new label has waited
    ``max_wait_minutes`` (0 = never by time). ``campaign``: the label store campaign whose images are
    trained on (empty = the only one). Label writes need a token: the environment variable named by
    ``token_env``, else the first line of ``token_file``; with neither, writes are refused. (No inline
    token: the resolved config is logged with every run.) ``in_service``: the scoring service starts the
    watcher as a subprocess (torch stays out of the service process)."""

    min_labels: int = 20
    max_wait_minutes: float = 60.0
    poll_s: float = 10.0
    campaign: str = ""
    token_env: str = "ANOMALYMATCH_LABEL_TOKEN"
    token_file: str | None = None
    in_service: bool = False
    pretrained: bool = True  # no champion yet: start from ImageNet weights (False: random, for tests)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.min_labels < 1 or self.max_wait_minutes < 0 or self.poll_s <= 0:
            raise ValueError("retrain.min_labels must be >= 1, retrain.max_wait_minutes >= 0, retrain.poll_s > 0")

    def resolve_token(self) -> str:
        """The write token: the environment first, then ``token_file``; '' when neither is set."""
        if os.environ.get(self.token_env):
            return os.environ[self.token_env].strip()
        if self.token_file:
            path = Path(self.token_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"retrain.token_file {path} does not exist; write the token into it")
            lines = path.read_text().splitlines()
            return lines[0].strip() if lines else ""
        return ""


@dataclass(frozen=True)
class AppConfig:
    data_dir: str = ".anomalymatch"
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    labelstore: LabelStoreConfig = field(default_factory=LabelStoreConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
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
            "registry": dataclasses.asdict(self.registry),
            "serving": dataclasses.asdict(self.serving),
            "labelstore": dataclasses.asdict(self.labelstore),
            "retrain": dataclasses.asdict(self.retrain),
        }

    def config_hash(self) -> str:
        """SHA-256 of the resolved config minus where things are stored (same recipe, same hash)."""
        d = self.to_dict()
        d.pop("data_dir")
        d.pop("tracking")
        d.pop("registry")  # gate and parity settings; the holdout shows in the label-set hash
        d.pop("serving")  # how models are served does not change the training recipe
        d.pop("labelstore")  # where labels are stored; the label set has its own hash
        d.pop("retrain")  # when retraining starts, not how it trains
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def replace(self, **sections: Any) -> "AppConfig":
        return dataclasses.replace(self, **sections)


_SECTIONS = {
    "preprocess": PreprocessSpec,
    "fixmatch": FixMatchConfig,
    "cycle": CycleConfig,
    "tracking": TrackingConfig,
    "registry": RegistryConfig,
    "serving": ServingConfig,
    "labelstore": LabelStoreConfig,
    "retrain": RetrainConfig,
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

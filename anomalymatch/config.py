"""Typed configuration: frozen dataclasses per component, YAML defaults, command-line overrides.

Config flows one way: ``load_config(yaml_path, overrides)`` -> ``AppConfig`` -> each function gets only
the fields it needs. The resolved config is logged with every run (``AppConfig.to_dict``).

The ``preprocess`` section is ``anomalymatch.preprocessing.PreprocessSpec`` (it travels with every model):
``size``, ``crop``, ``interpolation``, ``mean``, ``std``, ``fits_stretch``, and for multi-band survey data
``band_matrix`` (3 rows of N weights: how N bands become R, G, B) and ``band_stretch`` (one stretch for
every band, or N). For example, five bands g, r, i, z, y::

    preprocess:
      band_matrix: [[0, 0, 0.5, 0.5, 0], [0, 0.5, 0.5, 0, 0], [1, 0.5, 0, 0, 0]]
      band_stretch: [asinh, asinh, asinh, log, log]

On the command line: ``anomalymatch train --band-matrix "0,0,.5,.5,0; 0,.5,.5,0,0; 1,.5,0,0,0"
--band-stretch asinh``, or the override ``"preprocess.band_matrix"`` (a list of lists or that string).
Without a matrix, images keep 1-4 channels (more is refused with a message saying how to set one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.vector_index import SimilarConfig

DATA_DIR_ENV = "ANOMALYMATCH_HOME"
LABEL_TOKEN_ENV = "ANOMALYMATCH_LABEL_TOKEN"  # the default environment variable holding the label write token


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
    # How the pretrained network is adapted (the detection-quality study; the paper's recipe is
    # head_init "random", backbone_lr_scale 1, bn "train", lr_schedule "constant"):
    head_init: str = "random"  # "linprobe": a fresh trainer starts its head from a logistic regression on
    #                             the labelled images' embeddings (and the EMA from those weights)
    probe_margin: float = 0.0  # > 0: the probe head is rescaled so the labelled images' mean |logit| is this
    #                            (a separable labelled set otherwise saturates it and nothing is left to learn)
    backbone_lr_scale: float = 1.0  # the backbone's learning rate as a share of ``lr`` (the head gets ``lr``)
    bn: str = "train"  # "frozen": BatchNorm keeps its running statistics while training (affine still trained)
    lr_schedule: str = "constant"  # "cosine": lr * cos(7 pi t / 16 T) over each train() call of T iterations
    freeze_blocks: int = 0  # the stem and this many of the 7 blocks keep their pretrained weights (and BN
    #                         statistics): no backward pass through them, so higher resolutions cost less
    pretrained_pull: float = 0.0  # > 0: the backbone's weight decay pulls toward the weights training started
    #                               from (pretrained; a retrain's champion) with this coefficient, not toward 0 (L2-SP)
    weak_bn: str = "batch"  # the no-grad weak view's BatchNorm: "batch" statistics (training mode) or the
    #                         "running" ones (eval mode, as when scoring)
    teacher: str = "live"  # the network that runs the weak view and so gives the pseudo-labels: the "live" one
    #                        being trained (FixMatch's), or its "ema" (a mean teacher: slower to follow drift)
    cached_views: int = 0  # > 0 (with freeze_blocks): the frozen blocks' output is computed once per image for
    #                        its plain view and this many weak and strong views, and only the rest is run
    #                        per step (training/trunk_cache.py); what makes 160-224 px affordable on a CPU
    head_refit: str = "none"  # "blend": after each train() call the EMA model's head becomes the sum of its
    #                           own logit and a logistic regression on its labelled images' features, each
    #                           scaled to mean |logit| 1 on those images (still one linear layer)
    precision: str = "fp32"  # "bf16": forward passes under bf16 autocast (on a GPU; the loss stays float32)
    deterministic: bool = True  # on CUDA: deterministic cuDNN/cuBLAS kernels, so a seeded run repeats exactly

    def __post_init__(self) -> None:
        for key, allowed in (
            ("precision", ("fp32", "bf16")),
            ("head_init", ("random", "linprobe")),
            ("bn", ("train", "frozen")),
            ("lr_schedule", ("constant", "cosine")),
            ("head_refit", ("none", "blend")),
            ("weak_bn", ("batch", "running")),
            ("teacher", ("live", "ema")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"fixmatch.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.pretrained_pull < 0:
            raise ValueError(f"fixmatch.pretrained_pull must be >= 0, got {self.pretrained_pull}")
        if self.probe_margin < 0:
            raise ValueError(f"fixmatch.probe_margin must be >= 0, got {self.probe_margin}")
        if self.cached_views < 0 or (self.cached_views and not self.freeze_blocks):
            raise ValueError(
                f"fixmatch.cached_views must be >= 0 and needs fixmatch.freeze_blocks >= 1, got "
                f"cached_views={self.cached_views}, freeze_blocks={self.freeze_blocks}"
            )
        if not 0 <= self.freeze_blocks <= 7:
            raise ValueError(f"fixmatch.freeze_blocks must be in 0..7, got {self.freeze_blocks}")
        if not 0.0 <= self.backbone_lr_scale <= 1.0:
            raise ValueError(f"fixmatch.backbone_lr_scale must be in [0, 1], got {self.backbone_lr_scale}")
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
    saliency_top: int = 8  # occlusion maps of this many top candidates logged with each tracked cycle (0 = none)

    def __post_init__(self) -> None:
        if self.saliency_top < 0:
            raise ValueError(f"tracking.saliency_top must be >= 0, got {self.saliency_top}")


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
    fp16: bool = False  # also export an fp16 variant, kept only if it scores like fp32 (registry.fp16)
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
    Decoding threads (uploads and bulk jobs) are the top-level ``workers``.
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
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = its default
    providers: tuple[str, ...] = ()  # empty = CUDA then CPU, whichever this onnxruntime offers
    precision: str = "fp32"  # "fp16": a version's fp16 variant that passed parity; "auto": fp16 on CUDA only
    bulk_batch_size: int = 256
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
        if self.precision not in ("fp32", "fp16", "auto"):
            raise ValueError(f"serving.precision must be fp32, fp16 or auto, got {self.precision!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"serving.port must be in 0..65535 (0: any free port), got {self.port}")


@dataclass(frozen=True)
class LabelStoreConfig:
    """The label store (anomalymatch.labelstore). ``url`` None = SQLite at ``<data_dir>/labels.db``; else a
    SQLAlchemy URL such as ``postgresql+psycopg://user:pass@host/db``. ``busy_timeout_s``: how long a writer
    waits for another writer's lock before giving up.

    Label writes through the service need a token: the environment variable named by ``token_env``, else
    the first line of ``token_file``; it acts as one admin beside the personal tokens of
    ``anomalymatch users`` (with neither tokens nor users, writes are refused). (No inline token: the resolved
    config is logged with every run.)"""

    url: str | None = None
    busy_timeout_s: float = 30.0
    token_env: str = LABEL_TOKEN_ENV
    token_file: str | None = None

    def __post_init__(self) -> None:
        if self.busy_timeout_s < 0:
            raise ValueError(f"labelstore.busy_timeout_s must be >= 0, got {self.busy_timeout_s}")

    def resolve_token(self) -> str:
        """The write token: the environment first, then ``token_file``; '' when neither is set."""
        if os.environ.get(self.token_env):
            return os.environ[self.token_env].strip()
        if self.token_file:
            path = Path(self.token_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"labelstore.token_file {path} does not exist; write the token into it")
            lines = path.read_text().splitlines()
            return lines[0].strip() if lines else ""
        return ""


@dataclass(frozen=True)
class RetrainConfig:
    """Continuous retraining (``anomalymatch retrain --watch``).

    A retrain starts once ``min_labels`` new labels arrived, or once the oldest new label has waited
    ``max_wait_minutes`` (0 = never by time). ``campaign``: the label store campaign whose images are
    trained on (empty = the only one). ``in_service``: the scoring service starts the watcher as a
    subprocess (torch stays out of the service process)."""

    min_labels: int = 20
    max_wait_minutes: float = 60.0
    poll_s: float = 10.0
    campaign: str = ""
    in_service: bool = False
    pretrained: bool = True  # no champion yet: start from ImageNet weights (False: random, for tests)
    device: str = "auto"
    embeddings: bool = True  # store the feature vectors of the images each retrain held ("more like this")
    min_anomalies: int = 3  # while there is no trained champion (none, or a cold-start ranking), no retrain
    #                         before this many images are labelled anomaly (``--force`` overrides)

    def __post_init__(self) -> None:
        if self.min_labels < 1 or self.max_wait_minutes < 0 or self.poll_s <= 0:
            raise ValueError("retrain.min_labels must be >= 1, retrain.max_wait_minutes >= 0, retrain.poll_s > 0")
        if self.min_anomalies < 1:
            raise ValueError(f"retrain.min_anomalies must be >= 1, got {self.min_anomalies}")


@dataclass(frozen=True)
class ColdStartConfig:
    """The first ranking of a campaign with no labelled anomaly (``anomalymatch coldstart``): outlierness is
    one minus the mean cosine similarity to the ``k`` nearest of ``reference`` sampled pool images, in the
    ImageNet features."""

    k: int = 10
    reference: int = 2048

    def __post_init__(self) -> None:
        if self.k < 1 or self.reference <= self.k:
            raise ValueError(f"coldstart.k must be >= 1 and coldstart.reference > k, got {self.k}, {self.reference}")


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
    similar: SimilarConfig = field(default_factory=SimilarConfig)
    coldstart: ColdStartConfig = field(default_factory=ColdStartConfig)
    workers: int = 0  # image-decoding threads everywhere (training, uploads, bulk jobs); 0 = one per CPU
    preset: str = ""  # the named recipe applied under the config file and options (PRESETS); "" = none

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {self.workers}")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(PRESETS)}")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "workers": self.workers,
            "preset": self.preset,
            "preprocess": self.preprocess.to_dict(),
            "fixmatch": dataclasses.asdict(self.fixmatch),
            "cycle": dataclasses.asdict(self.cycle),
            "tracking": dataclasses.asdict(self.tracking),
            "registry": dataclasses.asdict(self.registry),
            "serving": dataclasses.asdict(self.serving),
            "labelstore": dataclasses.asdict(self.labelstore),
            "retrain": dataclasses.asdict(self.retrain),
            "similar": dataclasses.asdict(self.similar),
            "coldstart": dataclasses.asdict(self.coldstart),
        }

    def config_hash(self) -> str:
        """SHA-256 of the sections that define the training recipe (``RECIPE_SECTIONS``): same recipe, same
        hash, whatever the storage, serving or retraining settings (the label set has its own hash)."""
        d = self.to_dict()
        return hashlib.sha256(json.dumps({k: d[k] for k in RECIPE_SECTIONS}, sort_keys=True).encode()).hexdigest()

    def replace(self, **sections: Any) -> AppConfig:
        return dataclasses.replace(self, **sections)


#: Named training recipes (``preset`` in a config file, ``--preset`` on the command line): the settings
#: each applies on top of the defaults; a config file and command-line options still override them. The
#: README's study table has what each costs and finds on the paper's protocol.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # the AnomalyMatch paper's FixMatch recipe (its hyper-parameters; 64 px rather than its 224 on a CPU)
    "paper": {},
    # 96 px with the stem and first 3 blocks kept at their ImageNet weights (no backward pass through them)
    "balanced": {"preprocess": {"size": 96}, "fixmatch": {"freeze_blocks": 3}},
    # balanced without FixMatch's unlabelled term (supervised fine-tuning on the labels alone) and with 300
    # iterations per cycle: a quarter of the CPU time (README: what the unlabelled term adds)
    "fast": {
        "preprocess": {"size": 96},
        "fixmatch": {"freeze_blocks": 3, "lambda_u": 0.0},
        "cycle": {"iterations": 300},
    },
}

#: The recipe ``anomalymatch train`` and ``anomalymatch benchmark`` use when neither the command line nor the
#: config file names one (README: the study). Other entry points (the retrain watcher, cold start, the demo)
#: train with the config as given, the paper's recipe unless it names a preset.
TRAIN_PRESET = "balanced"

#: The config sections that define how a model is trained, and so ``AppConfig.config_hash``.
RECIPE_SECTIONS = ("preprocess", "fixmatch", "cycle")

#: Keys that moved, with where they live now: a config file naming the old place gets told.
_MOVED = {
    ("serving", "decode_workers"): "workers (top level)",
    ("serving", "bulk_workers"): "workers (top level)",
    ("retrain", "token_env"): "labelstore.token_env",
    ("retrain", "token_file"): "labelstore.token_file",
}

_SECTIONS = {
    "preprocess": PreprocessSpec,
    "fixmatch": FixMatchConfig,
    "cycle": CycleConfig,
    "tracking": TrackingConfig,
    "registry": RegistryConfig,
    "serving": ServingConfig,
    "labelstore": LabelStoreConfig,
    "retrain": RetrainConfig,
    "similar": SimilarConfig,
    "coldstart": ColdStartConfig,
}


def config_from_dict(raw: Mapping[str, Any]) -> AppConfig:
    """Build an AppConfig from nested dicts, rejecting unknown keys with the list of valid ones."""
    moved = [
        f"{section}.{key} is now {where}"
        for (section, key), where in _MOVED.items()
        if isinstance(raw.get(section), Mapping) and key in raw[section]
    ]
    if moved:
        raise ValueError(f"config keys moved: {'; '.join(moved)}")
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
        elif key in ("data_dir", "workers", "preset"):
            kwargs[key] = value
        else:
            valid = sorted([*_SECTIONS, "data_dir", "workers", "preset"])
            raise ValueError(f"unknown config key '{key}'; valid: {valid}")
    return AppConfig(**kwargs)


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None, default_preset: str = ""
) -> AppConfig:
    """Defaults <- preset <- YAML file <- overrides (dotted keys such as ``"cycle.iterations"`` or nested
    dicts). The preset is named by ``overrides["preset"]`` or the file's ``preset`` key, else it is
    ``default_preset`` ("" = none: the dataclass defaults, the paper's recipe).

    ``ANOMALYMATCH_HOME`` sets the default data folder.
    """
    raw: dict[str, Any] = AppConfig().to_dict()
    if os.environ.get(DATA_DIR_ENV):
        raw["data_dir"] = os.environ[DATA_DIR_ENV]
    loaded: Mapping[str, Any] = {}
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        with p.open() as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"config file {p} must hold a mapping at the top level")
    preset = (overrides or {}).get("preset") or loaded.get("preset") or default_preset
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        raw = _deep_merge(raw, {**PRESETS[preset], "preset": preset})
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

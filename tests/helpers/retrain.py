"""The retraining tests' small world: a tiny config (32 px, 2 iterations, CPU, no pretrained weights), a
folder of real PNGs whose anomalies have a bright square, and ids picked inside or outside the registry's
id-hashed holdout slice."""

from __future__ import annotations

from anomalymatch.config import AppConfig, CycleConfig, FixMatchConfig, RegistryConfig, RetrainConfig, TrackingConfig
from anomalymatch.preprocessing import PreprocessSpec
from registry.holdout import holdout_position
from tests.helpers.images import encode_png, gradient_rgb

FRACTION = 0.5


def tiny_config(root, **retrain) -> AppConfig:
    return AppConfig(
        data_dir=str(root / "home"),
        preprocess=PreprocessSpec(size=32),
        fixmatch=FixMatchConfig(batch_size=4, uratio=1),
        cycle=CycleConfig(iterations=2, top_candidates=5, pool_sample=0, score_batch_size=16),
        tracking=TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="retrain-test"),
        registry=RegistryConfig(
            holdout_fraction=FRACTION,
            parity_sample=8,
            parity_top_k=4,
            gate_auprc_tolerance=1.0,
            gate_precision_tolerance=1.0,
        ),
        retrain=RetrainConfig(**{"min_labels": 4, "poll_s": 0.1, "pretrained": False, "device": "cpu", **retrain}),
        workers=1,
    )


def write_campaign_images(folder, n: int = 36) -> dict[str, int]:
    """n real PNGs; anomalies have a bright square. Returns id -> truth."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(n):
        img = gradient_rgb(40, 40, seed=i)
        name = f"img{i:02d}.png"
        truth[name] = int(i % 4 == 0)
        if truth[name]:
            img[10:30, 10:30] = 250
        (folder / name).write_bytes(encode_png(img))
    return truth


def pick(truth: dict[str, int], cls: int, held: bool, k: int, skip=()) -> list[str]:
    """k ids of class ``cls`` inside (held) or outside the registry's id-hashed holdout slice."""
    ids = [
        i for i, y in sorted(truth.items()) if y == cls and (holdout_position(i) < FRACTION) == held and i not in skip
    ]
    assert len(ids) >= k, (cls, held, ids)
    return ids[:k]

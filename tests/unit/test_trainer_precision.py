"""The GPU-ready training step, exercised on the CPU: bf16 autocast trains and stays finite, seeded runs
repeat exactly, statistics stay lazy tensors until read, and the batched gather the GPU uses for the
weak augmentation gives the CPU loop's images."""

import dataclasses

import numpy as np
import pytest
import torch

from anomalymatch.config import FixMatchConfig
from anomalymatch.preprocessing import PreprocessSpec
from training.augment import _axis_index, gather_rows_cols, weak_augment
from training.model import create_model
from training.trainer import FixMatchTrainer, StepStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = PreprocessSpec(size=32)
CFG = FixMatchConfig(batch_size=4, uratio=2, threshold=0.5)


def _data():
    rng = np.random.default_rng(1)
    labelled = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    labelled[:2, 8:24, 8:24] = 255
    return labelled, np.array([1, 1, 0, 0, 0, 0]), rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)


def _train(cfg: FixMatchConfig, iterations: int = 3) -> tuple[FixMatchTrainer, list[StepStats]]:
    labelled, y, pool = _data()
    torch.manual_seed(0)
    trainer = FixMatchTrainer(create_model(SPEC, pretrained=False), cfg, seed=7, device="cpu")
    return trainer, trainer.train(labelled, y, pool, iterations=iterations)


def _weights(trainer: FixMatchTrainer) -> list[torch.Tensor]:
    return [v.detach().clone() for v in trainer.model.state_dict().values()]


def test_bf16_autocast_trains_finite_and_differs_from_fp32():
    fp32, _ = _train(CFG)
    bf16, stats = _train(dataclasses.replace(CFG, precision="bf16"))
    assert all(np.isfinite([s.loss, s.supervised, s.unsupervised, s.mask_rate]).all() for s in stats)
    weights = _weights(bf16)
    assert all(torch.isfinite(w.float()).all() for w in weights)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # autocast: master weights stay fp32
    changed = [not torch.equal(a, b) for a, b in zip(_weights(fp32), weights) if a.dtype.is_floating_point]
    assert any(changed), "bf16 autocast had no effect on the trained weights"
    scores = bf16.score(_data()[2], backend="torch")
    assert np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_seeded_runs_repeat_exactly(precision):
    cfg = dataclasses.replace(CFG, precision=precision)
    (a, stats_a), (b, stats_b) = _train(cfg), _train(cfg)
    for x, y in zip(_weights(a), _weights(b)):
        assert torch.equal(x, y)
    assert [s.to_dict() for s in stats_a] == [s.to_dict() for s in stats_b]


def test_step_stats_stay_on_the_device_until_read():
    stats = StepStats(5, torch.tensor([1.5, 1.0, 0.5, 0.25, 0.0]), lr=0.01)
    assert stats._host is None and isinstance(stats._values, torch.Tensor)  # nothing read yet: no sync
    assert stats.loss == 1.5 and stats.mask_rate == 0.25
    assert stats._values is None  # read once, then kept as floats
    assert stats.to_dict() == {
        "iteration": 5,
        "loss": 1.5,
        "supervised": 1.0,
        "unsupervised": 0.5,
        "mask_rate": 0.25,
        "pseudo_anomaly_rate": 0.0,
        "lr": 0.01,
    }


def test_batched_gather_matches_the_per_image_loop():
    images = torch.from_numpy(_data()[2]).permute(0, 3, 1, 2).contiguous()
    looped = weak_augment(images, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    n, _, h, w = images.shape
    rows = _axis_index(n, h, True, 0.125, g, images.device)
    cols = _axis_index(n, w, True, 0.125, g, images.device)
    assert torch.equal(gather_rows_cols(images, rows, cols), looped)


def test_precision_must_be_known():
    with pytest.raises(ValueError, match="fixmatch.precision"):
        FixMatchConfig(precision="fp16")

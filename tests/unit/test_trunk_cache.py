"""The frozen-trunk cache (``fixmatch.cached_views``): the split network equals the whole one, views are a
function of the image and the seed (not of the order images are met in), cached scoring equals the
whole EMA model's, and the frozen trunk never changes (an interrupted cached run resuming exactly is in
test_trainer.py, beside the uncached one)."""

import dataclasses

import numpy as np
import pytest
import torch

from anomalymatch.config import FixMatchConfig
from anomalymatch.preprocessing import PreprocessSpec
from training.augment import AugmentConfig
from training.model import create_model
from training.trainer import FixMatchTrainer
from training.trunk_cache import TrunkCache, image_keys, tail_forward, trunk_forward

SPEC = PreprocessSpec(size=32)
CFG = FixMatchConfig(batch_size=4, uratio=1, threshold=0.5, freeze_blocks=3, cached_views=2)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    labelled = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    labelled[:2, 8:24, 8:24] = 255
    y = np.array([1, 1, 0, 0, 0, 0])
    pool = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    return labelled, y, pool


def _trainer(seed=0, **overrides):
    torch.manual_seed(seed)
    return FixMatchTrainer(
        create_model(SPEC, pretrained=False), dataclasses.replace(CFG, **overrides), seed=seed, device="cpu"
    )


@pytest.mark.parametrize("blocks", [1, 3, 5, 7])
def test_tail_of_trunk_is_the_whole_network(blocks):
    torch.manual_seed(0)
    model = create_model(SPEC, pretrained=False).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(tail_forward(model, trunk_forward(model, x, blocks), blocks), model(x), atol=1e-5)


def test_views_depend_on_the_image_and_seed_not_on_order():
    _, _, pool = _data()
    torch.manual_seed(0)
    model = create_model(SPEC, pretrained=False)

    def cache(seed):
        return TrunkCache(model, 3, 2, seed, AugmentConfig(), torch.device("cpu"))

    a, b, other = cache(0), cache(0), cache(1)
    a.features(pool, "strong", torch.Generator().manual_seed(0))
    b.features(pool[::-1].copy(), "strong", torch.Generator().manual_seed(0))
    other.features(pool, "strong", torch.Generator().manual_seed(0))
    keys = image_keys(pool)
    assert len(set(keys)) == len(pool)
    a.features(pool[:3], "weak", torch.Generator().manual_seed(0))
    assert all(a.store["weak"][k].shape[0] == 8 for k in keys[:3])  # 4x views for the few labelled images
    for k in keys:
        assert a.store["strong"][k].shape[0] == 2
        assert torch.equal(a.store["strong"][k], b.store["strong"][k])
        assert not torch.equal(a.store["strong"][k][0], a.store["strong"][k][1])  # two distinct views
        assert not torch.equal(a.store["strong"][k], other.store["strong"][k])  # another seed, other views
    before = dict(a.store["strong"])
    a.features(pool[:5], "strong", torch.Generator().manual_seed(0))
    assert all(a.store["strong"][k] is before[k] for k in keys)  # seen images are not recomputed


def test_past_its_byte_cap_the_cache_computes_without_keeping():
    _, _, pool = _data()
    torch.manual_seed(0)
    model = create_model(SPEC, pretrained=False)
    kept = TrunkCache(model, 3, 2, 0, AugmentConfig(), torch.device("cpu"))
    capped = TrunkCache(model, 3, 2, 0, AugmentConfig(), torch.device("cpu"), max_bytes=0)
    for kind in ("clean", "strong"):
        a = kept.features(pool, kind, torch.Generator().manual_seed(1))
        b = capped.features(pool, kind, torch.Generator().manual_seed(1))
        assert torch.allclose(a, b, atol=1e-6)  # the same views, recomputed from the image's own seed
    assert len(capped) == 0 and capped.nbytes == 0
    assert kept.nbytes == sum(t.numel() * 4 for s in kept.store.values() for t in s.values()) > 0


def test_cached_scoring_equals_the_whole_ema_model_and_the_trunk_stays_frozen():
    labelled, y, pool = _data()
    trainer = _trainer()
    stem = trainer.model.backbone.conv_stem.weight.clone()
    block = {k: v.clone() for k, v in trainer.model.backbone.blocks[2].state_dict().items()}
    tail = trainer.model.backbone.blocks[4].state_dict()["0.conv_pw.weight"].clone()
    trainer.train(labelled, y, pool, iterations=3)
    assert torch.equal(stem, trainer.model.backbone.conv_stem.weight)
    assert all(torch.equal(block[k], v) for k, v in trainer.model.backbone.blocks[2].state_dict().items())
    assert not torch.equal(tail, trainer.model.backbone.blocks[4].state_dict()["0.conv_pw.weight"])
    cached = trainer.score(pool, batch_size=5)
    whole = trainer.score(pool, batch_size=5, backend="torch")
    onnx = trainer.score(pool, batch_size=5, backend="onnx")  # what a registration exports
    assert np.abs(cached - whole).max() <= 1e-5
    assert np.abs(cached - onnx).max() <= 1e-4
    assert all(k in trainer.cache.store["clean"] for k in image_keys(pool))
    assert not any(m.training for m in trainer.frozen) and trainer.model.training  # modes kept by the fills
    ema = trainer.ema.module.state_dict()
    for name, value in trainer.model.state_dict().items():
        if name in trainer.ema.exact:  # the frozen trunk: bit-exact in the EMA, so cached outputs stay its own
            assert torch.equal(ema[name], value), name
    assert any("blocks.2" in n for n in trainer.ema.exact) and not any("blocks.4" in n for n in trainer.ema.exact)


def test_cached_training_learns_a_separable_anomaly():
    labelled, y, pool = _data()
    torch.manual_seed(0)
    cfg = FixMatchConfig(batch_size=8, uratio=1, freeze_blocks=2, cached_views=2)
    trainer = FixMatchTrainer(create_model(SPEC, pretrained=True), cfg, device="cpu")

    def margin() -> float:
        s = trainer.score(labelled, use_ema=False)
        return float(s[y == 1].mean() - s[y == 0].mean())

    before = margin()
    trainer.train(labelled, y, pool, iterations=15)
    assert margin() > before + 0.2


def test_cached_views_need_a_frozen_trunk():
    with pytest.raises(ValueError, match="freeze_blocks"):
        FixMatchConfig(cached_views=2)
    with pytest.raises(ValueError, match="cached_views"):
        FixMatchConfig(cached_views=-1, freeze_blocks=2)


def test_with_test_time_views_scoring_runs_the_whole_model_not_the_one_cached_view():
    labelled, y, pool = _data()
    torch.manual_seed(0)
    model = create_model(PreprocessSpec(size=32, views="flips"), pretrained=False)
    trainer = FixMatchTrainer(model, CFG, seed=0, device="cpu")
    trainer.train(labelled, y, pool, iterations=2)
    scores = trainer.score(pool, batch_size=5)
    assert np.abs(scores - trainer.score(pool, batch_size=5, backend="torch")).max() <= 1e-4
    assert np.abs(scores - trainer.cache.score(trainer.ema.module, pool)).max() > 1e-6  # the one-view score differs

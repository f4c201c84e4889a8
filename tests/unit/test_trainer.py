"""FixMatch trainer on a tiny real model: a step learns, checkpoints are safetensors, and a run
interrupted mid-cycle resumes to exactly the weights of an uninterrupted run."""

import numpy as np
import pytest
import torch

from anomalymatch.config import FixMatchConfig
from anomalymatch.preprocessing import PreprocessSpec
from training.model import create_model
from training.trainer import FixMatchTrainer

SPEC = PreprocessSpec(size=32)
CFG = FixMatchConfig(batch_size=4, uratio=1, threshold=0.5)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    labelled = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    labelled[:2, 8:24, 8:24] = 255  # the "anomalies" have a bright square
    y = np.array([1, 1, 0, 0, 0, 0])
    pool = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    return labelled, y, pool


def _trainer(seed=0):
    torch.manual_seed(seed)
    return FixMatchTrainer(create_model(SPEC, pretrained=False), CFG, seed=seed, device="cpu")


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("overrides", [{}, {"freeze_blocks": 3, "cached_views": 2}], ids=["pixels", "trunk-cache"])
def test_resume_after_interrupted_cycle_matches_uninterrupted(tmp_path, overrides):
    """With the trunk cache the resumed trainer starts with an empty cache, refilled with the same views (their
    seed comes from the checkpoint)."""
    labelled, y, pool = _data()
    reference = _variant(**overrides)
    reference.train(labelled, y, pool, iterations=4)

    ckpt = tmp_path / "ckpt.safetensors"
    crashing = _variant(**overrides)

    def crash_after_third(stats):
        if stats.iteration == 3:
            raise _Crash

    with pytest.raises(_Crash):
        crashing.train(
            labelled, y, pool, iterations=4, on_step=crash_after_third, checkpoint_path=ckpt, checkpoint_every=2
        )
    resumed = _variant(seed=123, **overrides)  # different seed: everything must come from the checkpoint
    meta = resumed.load_checkpoint(ckpt)
    assert meta["iteration"] == "2" and resumed.iteration == 2
    resumed.train(labelled, y, pool, iterations=2)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    for a, b in zip(reference.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_checkpoint_is_safetensors_not_pickle(tmp_path):
    labelled, y, pool = _data()
    trainer = _trainer()
    trainer.train(labelled, y, pool, iterations=1, checkpoint_path=tmp_path / "c.safetensors")
    raw = (tmp_path / "c.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and b"anomalymatch-checkpoint-1" in raw[:20000]
    (tmp_path / "other.safetensors").write_bytes(
        raw.replace(b"anomalymatch-checkpoint-1", b"some-other-checkpoint-v01")
    )
    with pytest.raises(ValueError, match="not an AnomalyMatch checkpoint"):
        _trainer().load_checkpoint(tmp_path / "other.safetensors")


def test_training_needs_both_classes():
    labelled, _, pool = _data()
    with pytest.raises(ValueError, match="both classes"):
        _trainer().train(labelled, np.zeros(6, dtype=int), pool, iterations=1)


def test_supervised_only_draws_no_unlabelled_images_and_scores_are_probabilities():
    labelled, y, pool = _data()
    trainer = FixMatchTrainer(
        create_model(SPEC, pretrained=False), FixMatchConfig(batch_size=4, lambda_u=0.0), device="cpu"
    )
    stats = trainer.train(labelled, y, pool, iterations=2)
    assert all(s.mask_rate == 0.0 and s.unsupervised == 0.0 for s in stats)
    scores = trainer.score(pool, batch_size=5)
    assert scores.shape == (12,) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))


def test_training_separates_a_learnable_anomaly():
    labelled, y, pool = _data()
    torch.manual_seed(0)
    trainer = FixMatchTrainer(create_model(SPEC, pretrained=True), FixMatchConfig(batch_size=8, uratio=1), device="cpu")

    def margin() -> float:
        s = trainer.score(labelled, use_ema=False, backend="torch")
        return float(s[y == 1].mean() - s[y == 0].mean())

    before = margin()
    trainer.train(labelled, y, pool, iterations=15)
    assert margin() > before + 0.2


def test_onnx_and_torch_scoring_agree():
    labelled, y, pool = _data()
    trainer = _trainer()
    trainer.train(labelled, y, pool, iterations=2)
    onnx_scores = trainer.score(pool, batch_size=5, backend="onnx")
    torch_scores = trainer.score(pool, batch_size=5, backend="torch")
    assert np.abs(onnx_scores - torch_scores).max() <= 1e-4
    with pytest.raises(ValueError, match="backend"):
        trainer.score(pool, backend="tensorrt")
    with pytest.raises(ValueError, match="uint8 images"):
        trainer.score(pool[..., :2], backend="onnx")


def _variant(seed=0, **overrides):
    import dataclasses

    torch.manual_seed(seed)
    return FixMatchTrainer(
        create_model(SPEC, pretrained=False), dataclasses.replace(CFG, **overrides), seed=seed, device="cpu"
    )


def test_linprobe_head_starts_from_the_probe_and_the_ema_follows():
    labelled, y, pool = _data()
    trainer = _variant(head_init="linprobe")
    trainer.init_head_from_probe(labelled, y)
    scores = trainer.score(labelled, backend="torch", use_ema=False)
    assert scores[y == 1].min() > scores[y == 0].max()  # the probe separates the labelled set
    for a, b in zip(trainer.model.state_dict().values(), trainer.ema.state_dict().values()):
        assert torch.equal(a, b)  # the EMA starts from the probe's weights, not the random head
    head = trainer.model.backbone.get_classifier()
    assert torch.allclose(head.weight[0], -head.weight[1]) and torch.allclose(head.bias[0], -head.bias[1])
    fresh = _variant(head_init="linprobe")
    fresh.train(labelled, y, pool, iterations=1)  # train() fits the head at iteration 0 ...
    before = fresh.model.backbone.get_classifier().weight.clone()
    fresh.train(labelled, y, pool, iterations=1)  # ... and never again
    after = fresh.model.backbone.get_classifier().weight
    assert not torch.equal(before, after) and (after - before).abs().max() < 0.05


def test_backbone_learning_rate_scale_and_cosine_schedule():
    labelled, y, pool = _data()
    trainer = _variant(backbone_lr_scale=0.1, lr_schedule="cosine")
    head_ids = {id(p) for p in trainer.model.backbone.get_classifier().parameters()}
    for group in trainer.optimizer.param_groups:
        is_head = all(id(p) in head_ids for p in group["params"])
        assert group["base_lr"] == pytest.approx(CFG.lr if is_head else CFG.lr * 0.1)
    lrs = []
    trainer.train(labelled, y, pool, iterations=4, on_step=lambda s: lrs.append(s.lr))
    assert lrs[0] == pytest.approx(CFG.lr) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(CFG.lr * np.cos(7 * np.pi * 3 / 64))


def test_frozen_blocks_and_frozen_batchnorm_keep_their_pretrained_state():
    labelled, y, pool = _data()
    trainer = _variant(freeze_blocks=2, bn="frozen")
    backbone = trainer.model.backbone
    frozen = {k: v.clone() for k, v in backbone.blocks[1].state_dict().items()}
    stats = backbone.bn2.running_mean.clone()
    later = backbone.blocks[5].state_dict()["0.conv_pw.weight"].clone()
    trainer.train(labelled, y, pool, iterations=2)
    assert all(torch.equal(frozen[k], v) for k, v in backbone.blocks[1].state_dict().items())
    assert torch.equal(stats, backbone.bn2.running_mean)  # bn "frozen": running statistics kept
    assert not torch.equal(later, backbone.blocks[5].state_dict()["0.conv_pw.weight"])  # the rest trains
    assert not any(p.requires_grad for p in backbone.conv_stem.parameters())


def test_probe_margin_tempers_the_probe_head():
    labelled, y, _ = _data()
    trainer = _variant(head_init="linprobe", probe_margin=1.0)
    trainer.init_head_from_probe(labelled, y)
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(labelled).permute(0, 3, 1, 2))
    margin = (logits[:, 1] - logits[:, 0]).abs().mean()
    assert margin == pytest.approx(1.0, rel=1e-3)


def test_checkpoints_from_before_named_momentum_still_resume(tmp_path):
    """Older checkpoints stored momentum by position (weights with decay first, then biases and norms)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from training.trainer import _index_keys

    labelled, y, pool = _data()
    trainer = _trainer()
    trainer.train(labelled, y, pool, iterations=2)
    path = trainer.save_checkpoint(tmp_path / "new.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    for (name, _), old_key in zip(trainer.model.named_parameters(), _index_keys(trainer.model)):
        tensors[old_key] = tensors.pop(f"optim.{name}.momentum_buffer")
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    resumed = _trainer(seed=5)
    resumed.load_checkpoint(tmp_path / "old.safetensors")
    for p, q in zip(trainer.model.parameters(), resumed.model.parameters()):
        assert torch.equal(trainer.optimizer.state[p]["momentum_buffer"], resumed.optimizer.state[q]["momentum_buffer"])


def test_a_retrain_from_a_trained_model_keeps_its_head():
    labelled, y, pool = _data()
    moved = {}
    for fresh in (True, False):
        trainer = _variant(head_init="linprobe")  # the same seed: the same starting head
        trainer.fresh_head = fresh  # False: what the retrain watcher sets when it starts from the champion
        before = trainer.model.backbone.get_classifier().weight.detach().clone()
        trainer.train(labelled, y, pool, iterations=1)
        moved[fresh] = float((trainer.model.backbone.get_classifier().weight.detach() - before).abs().max())
    assert moved[False] < 0.05 < moved[True], moved  # one SGD step, against a probe fit that replaces the head


def test_blend_refit_adds_the_probe_on_the_trained_features_to_the_ema_head():
    labelled, y, pool = _data()
    trainer = _variant(head_refit="blend")
    trainer.train(labelled, y, pool, iterations=1)  # one step: the FixMatch head alone barely separates
    scores = trainer.score(labelled, backend="torch")
    assert scores[y == 1].min() > scores[y == 0].max()  # the probe half separates the labelled set
    head = trainer.ema.module.backbone.get_classifier()
    assert torch.allclose(head.weight[0], -head.weight[1]) and torch.allclose(head.bias[0], -head.bias[1])
    model_head = trainer.model.backbone.get_classifier()
    assert not torch.allclose(model_head.weight, head.weight)  # only the EMA (the exported model) is refitted
    plain = _variant()
    plain.train(labelled, y, pool, iterations=1)
    assert torch.equal(plain.model.backbone.get_classifier().weight, model_head.weight)  # training unchanged


def test_pretrained_pull_keeps_the_backbone_near_its_start_and_leaves_the_head_free():
    labelled, y, pool = _data()

    def drift(pull):  # lr * pull = 0.1: each step goes a tenth of the way back (a random-init net's
        # gradients are large; at lr 0.05 training diverges and the comparison is noise)
        trainer = _variant(pretrained_pull=pull, lr=0.001)
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train(labelled, y, pool, iterations=4)
        now = {n: p.detach() for n, p in trainer.model.named_parameters()}
        backbone = sum(float((now[n] - start[n]).norm()) for n in start if "classifier" not in n and now[n].ndim > 1)
        head = float((now["backbone.classifier.weight"] - start["backbone.classifier.weight"]).norm())
        return backbone, head

    free, free_head = drift(0.0)
    pulled, pulled_head = drift(100.0)
    assert pulled < 0.8 * free
    assert pulled_head > 0.0 and free_head > 0.0
    trainer = _variant(pretrained_pull=2.0)
    head = {id(p) for p in trainer.model.backbone.get_classifier().parameters()}
    assert trainer.anchor and not any(id(p) in head for p, _ in trainer.anchor)
    for group in trainer.optimizer.param_groups:  # the head keeps its decay toward zero; pulled ones have none
        is_head = any(id(p) in head for p in group["params"])
        if is_head and group["params"][0].ndim > 1:
            assert group["weight_decay"] == CFG.weight_decay
        if group["pull"]:
            assert group["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="pretrained_pull"):
        FixMatchConfig(pretrained_pull=-1.0)


@pytest.mark.parametrize("frozen", [{}, {"freeze_blocks": 2}, {"freeze_blocks": 2, "cached_views": 1}])
def test_weak_view_batchnorm_on_running_statistics_leaves_them_to_the_training_forward(frozen):
    labelled, y, pool = _data()
    counts = {}
    for mode in ("batch", "running"):
        trainer = _variant(weak_bn=mode, **frozen)
        trainer.train(labelled, y, pool, iterations=2)
        counts[mode] = int(trainer.model.backbone.bn2.num_batches_tracked)
        assert trainer.model.backbone.bn2.training  # training mode restored after the weak forward
        assert not any(m.training for m in trainer.frozen)  # ...and the frozen blocks left in eval
    assert counts == {"batch": 4, "running": 2}  # two BatchNorm updates per step, or one
    with pytest.raises(ValueError, match="weak_bn"):
        FixMatchConfig(weak_bn="frozen")


@pytest.mark.parametrize("frozen", [{}, {"freeze_blocks": 2, "cached_views": 1}])
def test_ema_teacher_gives_the_pseudo_labels_and_leaves_its_statistics_to_the_average(frozen):
    labelled, y, pool = _data()
    # decay 0: the EMA is a copy of the live network after every step, so both teachers give the same
    # pseudo-labels and the same parameter trajectory; only the live network's BatchNorm counts differ
    runs = {}
    for teacher in ("live", "ema"):
        trainer = _variant(teacher=teacher, ema_decay=0.0, **frozen)
        trainer.train(labelled, y, pool, iterations=3)
        runs[teacher] = trainer
        assert trainer.model.backbone.bn2.training and not trainer.ema.module.training  # modes restored
    for name, a in runs["live"].model.named_parameters():
        assert torch.allclose(a, dict(runs["ema"].model.named_parameters())[name], atol=1e-6), name
    assert int(runs["live"].model.backbone.bn2.num_batches_tracked) == 6  # weak and training forwards
    assert int(runs["ema"].model.backbone.bn2.num_batches_tracked) == 3  # the weak view ran on the EMA
    # a lagging EMA teacher gives other pseudo-labels, so training takes another path
    lagging = _variant(teacher="ema", ema_decay=0.99, threshold=0.0, **frozen)
    lagging.train(labelled, y, pool, iterations=3)
    live = _variant(teacher="live", ema_decay=0.99, threshold=0.0, **frozen)
    live.train(labelled, y, pool, iterations=3)
    head = "backbone.classifier.weight"
    assert not torch.allclose(dict(live.model.named_parameters())[head], dict(lagging.model.named_parameters())[head])
    with pytest.raises(ValueError, match="teacher"):
        FixMatchConfig(teacher="student")

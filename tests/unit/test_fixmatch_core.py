"""FixMatch loss, EMA and samplers on small real tensors."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from training.ema import ModelEMA
from training.losses import fixmatch_loss
from training.sampler import UnlabelledStream, labelled_batch


def test_loss_masks_unconfident_pseudo_labels():
    logits_lb = torch.tensor([[2.0, -1.0], [-1.0, 2.0]])
    y = torch.tensor([0, 1])
    # first unlabelled image is confident (p=0.99 for class 1), second is not (p~0.6)
    logits_weak = torch.tensor([[0.0, 4.6], [0.0, 0.4]])
    logits_strong = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    parts = fixmatch_loss(logits_lb, y, logits_weak, logits_strong, threshold=0.95)
    assert parts.mask_rate.item() == pytest.approx(0.5)
    # unsupervised loss = CE(strong[0], 1) / 2 (mean over all unlabelled, masked count as 0)
    expected_unsup = nn.functional.cross_entropy(logits_strong[:1], torch.tensor([1])).item() / 2
    assert parts.unsupervised.item() == pytest.approx(expected_unsup, rel=1e-6)
    expected_sup = nn.functional.cross_entropy(logits_lb, y).item()
    assert parts.supervised.item() == pytest.approx(expected_sup, rel=1e-6)
    assert parts.total.item() == pytest.approx(expected_sup + expected_unsup, rel=1e-6)
    assert parts.pseudo_anomaly_rate.item() == pytest.approx(1.0)


def test_loss_threshold_one_disables_unsupervised_term_and_lambda_scales_it():
    g = torch.Generator().manual_seed(0)
    lb, weak, strong = torch.randn(4, 2, generator=g), torch.randn(10, 2, generator=g), torch.randn(10, 2, generator=g)
    y = torch.tensor([0, 1, 0, 1])
    none = fixmatch_loss(lb, y, weak, strong, threshold=1.0)
    assert none.mask_rate.item() == 0.0 and none.unsupervised.item() == 0.0
    all_ = fixmatch_loss(lb, y, weak, strong, threshold=0.0, lambda_u=1.0)
    half = fixmatch_loss(lb, y, weak, strong, threshold=0.0, lambda_u=0.5)
    assert all_.mask_rate.item() == 1.0
    assert (all_.total - half.total).item() == pytest.approx(0.5 * all_.unsupervised.item(), rel=1e-5)


def test_loss_gradient_flows_only_through_strong_view():
    lb = torch.randn(2, 2, requires_grad=True)
    weak = torch.tensor([[0.0, 9.0]], requires_grad=True)
    strong = torch.randn(1, 2, requires_grad=True)
    fixmatch_loss(lb, torch.tensor([0, 1]), weak, strong, threshold=0.5).total.backward()
    assert weak.grad is None or torch.all(weak.grad == 0)
    assert strong.grad is not None and torch.any(strong.grad != 0)


def test_loss_without_unlabelled_batch_is_supervised_only():
    lb = torch.randn(3, 2)
    y = torch.tensor([0, 1, 1])
    parts = fixmatch_loss(lb, y, lb[:0], lb[:0], threshold=0.95)
    assert parts.total.item() == pytest.approx(nn.functional.cross_entropy(lb, y).item())


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.lin(x))


def test_ema_averages_parameters_and_batchnorm_buffers():
    torch.manual_seed(0)
    model = _Net()
    ema = ModelEMA(model, decay=0.9)
    before = copy.deepcopy(ema.state_dict())
    model.train()
    model(torch.randn(8, 3) * 5 + 2)  # changes BN running stats
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    ema.update(model)
    state = model.state_dict()
    for name, value in ema.state_dict().items():
        if value.dtype.is_floating_point:
            expected = 0.9 * before[name] + 0.1 * state[name]
            assert torch.allclose(value, expected, atol=1e-6), name
        else:
            assert torch.equal(value, state[name]), name
    assert ema.state_dict()["bn.num_batches_tracked"].item() == 1
    assert not ema.state_dict()["bn.running_mean"].equal(before["bn.running_mean"])
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_follows_early_training_then_reaches_the_decay():
    ema = ModelEMA(_Net(), decay=0.99, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(890) == pytest.approx(0.99) and ema.decay_at(10_000) == 0.99
    assert ModelEMA(_Net(), decay=0.99).decay_at(0) == 0.99  # off by default: the paper's plain EMA
    model = _Net()
    before = copy.deepcopy(ema.state_dict())
    with torch.no_grad():
        model.lin.weight.copy_(before["lin.weight"] + 1.0)
    ema.update(model, step=0)
    assert torch.allclose(ema.state_dict()["lin.weight"], before["lin.weight"] + 0.9, atol=1e-6)


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_Net(), decay=1.0)


def test_labelled_batch_oversamples_rare_class():
    y = np.array([1] * 5 + [0] * 495)
    g = torch.Generator().manual_seed(0)
    idx = np.concatenate([labelled_batch(y, 16, g, oversample=True) for _ in range(400)])
    share = y[idx].mean()
    assert 0.45 < share < 0.55
    plain = np.concatenate([labelled_batch(y, 16, g, oversample=False) for _ in range(400)])
    assert y[plain].mean() < 0.03


def test_labelled_batch_is_reproducible_and_rejects_empty():
    y = np.array([0, 1, 0, 0])
    a = labelled_batch(y, 8, torch.Generator().manual_seed(3), True)
    b = labelled_batch(y, 8, torch.Generator().manual_seed(3), True)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="empty"):
        labelled_batch(np.array([], dtype=int), 4, torch.Generator(), True)


def test_unlabelled_stream_covers_every_image_each_epoch_and_restores_state():
    g = torch.Generator().manual_seed(1)
    stream = UnlabelledStream(10, g)
    first = np.concatenate([stream.next(4), stream.next(4), stream.next(2)])
    assert sorted(first.tolist()) == list(range(10))
    state, gen_state = stream.state(), g.get_state()
    expected = stream.next(7)
    g2 = torch.Generator()
    g2.set_state(gen_state)
    restored = UnlabelledStream(10, torch.Generator().manual_seed(99))
    restored.generator = g2
    restored.load_state(state)
    assert np.array_equal(restored.next(7), expected)
    with pytest.raises(ValueError, match="unlabelled images"):
        UnlabelledStream(5, g).load_state(state)

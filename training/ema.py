"""Exponential moving average of a model's weights, used for scoring (FixMatch's EMA model)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimiser step.

    Floating-point parameters and buffers are averaged; integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied. The copy stays in eval mode and needs no gradients.
    With ``warmup`` the decay at step ``t`` is ``min(decay, (1 + t) / (10 + t))``: in a short first
    cycle a plain 0.99 EMA is still mostly the initial (random-head) weights (0.99**60 = 55% after 60
    steps); warmed up, it tracks the trained weights from the start and reaches ``decay`` at t = 890.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()
        self.exact: set[str] = set()  # state entries copied, not averaged (frozen ones: equal, kept bit-exact)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """Average in ``model``'s weights; ``step`` (steps taken before this one) sets the warmup decay."""
        decay = self.decay_at(step)
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point and name not in self.exact:
                ema_value.mul_(decay).add_(value, alpha=1.0 - decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

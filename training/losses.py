"""The FixMatch objective, pure and small: supervised cross-entropy on labelled images plus
cross-entropy on confident hard pseudo-labels (from weakly augmented views) applied to the
strongly augmented views of the same unlabelled images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    supervised: torch.Tensor
    unsupervised: torch.Tensor
    mask_rate: torch.Tensor  # share of unlabelled images whose pseudo-label passed the threshold
    pseudo_anomaly_rate: torch.Tensor  # share of confident pseudo-labels that say "anomaly"


def fixmatch_loss(
    logits_lb: torch.Tensor,
    y: torch.Tensor,
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    threshold: float,
    lambda_u: float = 1.0,
) -> LossParts:
    """FixMatch loss. Pseudo-labels come from ``logits_weak`` without gradient; the unsupervised
    term is averaged over *all* unlabelled images (masked ones count as zero), as in FixMatch."""
    sup = F.cross_entropy(logits_lb, y)
    if logits_weak.numel() == 0:
        zero = logits_lb.new_zeros(())
        return LossParts(sup, sup.detach(), zero, zero, zero)
    with torch.no_grad():
        probs = torch.softmax(logits_weak.detach().float(), dim=1)
        confidence, pseudo = probs.max(dim=1)
        mask = (confidence >= threshold).float()
    unsup = (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
    confident = mask.sum()
    anomaly_rate = (mask * (pseudo == 1).float()).sum() / confident.clamp(min=1.0)
    return LossParts(sup + lambda_u * unsup, sup.detach(), unsup.detach(), mask.mean(), anomaly_rate)

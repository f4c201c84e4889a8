"""FixMatch augmentations on uint8 NCHW batches, vectorised over the batch with per-image parameters.

Weak: random horizontal/vertical flips and a random translation of up to ``translate`` of the size
(reflection padding + random crop, done as one index gather). Strong: weak, then RandAugment with
random magnitudes (FixMatch's "RA": ``n_ops`` ops drawn uniformly with replacement from the policy,
each at a magnitude drawn uniformly in its range), then Cutout with a grey square. The policy is data,
a tuple of ``(op_name, (low, high))``; every op in ``OPS`` takes a batch and one magnitude per image.
Ranges follow the FixMatch paper (Table 12) and TorchSSL's RandAugment. All randomness comes from the
``torch.Generator`` passed in, so a seed reproduces every image exactly.

The images may live on any device (a GPU: the trainer moves each uint8 batch once and augments there).
The random parameters are always drawn from the CPU generator, in the same order, and only then moved
to the images' device, so a seed gives the same parameters everywhere and no op waits for the device
(the per-op image counts that group a RandAugment round are CPU tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

WEAK_DEFAULTS: Mapping[str, bool | float] = MappingProxyType({"hflip": True, "vflip": True, "translate": 0.125})

STRONG_POLICY: tuple[tuple[str, tuple[float, float]], ...] = (
    ("autocontrast", (0.0, 1.0)),
    ("brightness", (0.05, 0.95)),  # enhancement factor: 0 black, 1 original
    ("color", (0.05, 0.95)),  # saturation factor: 0 grey, 1 original
    ("contrast", (0.05, 0.95)),  # contrast factor: 0 mean grey, 1 original
    ("equalize", (0.0, 1.0)),
    ("identity", (0.0, 1.0)),
    ("posterize", (4.0, 8.0)),  # bits kept (floor)
    ("rotate", (-30.0, 30.0)),  # degrees, counter-clockwise
    ("sharpness", (0.05, 0.95)),  # factor: 0 smoothed, 1 original
    ("shear_x", (-0.3, 0.3)),
    ("shear_y", (-0.3, 0.3)),
    ("solarize", (0.0, 256.0)),  # threshold: pixels >= it are inverted
    ("translate_x", (-0.3, 0.3)),  # fraction of the width, positive moves content right
    ("translate_y", (-0.3, 0.3)),  # fraction of the height, positive moves content down
)

CUTOUT_FILL = 127  # grey, as in FixMatch; geometric ops fill uncovered pixels with 0 (PIL's default)
_GREY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_MIN_SIDE = 3


# -- ops: (uint8 (N, 3, H, W), magnitudes (N,)) -> uint8 (N, 3, H, W) ---------------------------------
def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _blend(images: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance semantics: ``degenerate + factor * (image - degenerate)``."""
    x = images.float()
    return _to_uint8(degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate))


def _grey(x: Tensor) -> Tensor:
    return (x * _GREY_WEIGHTS.to(x.device)).sum(1, keepdim=True)


def _identity(images: Tensor, m: Tensor) -> Tensor:
    return images.clone()


def _autocontrast(images: Tensor, m: Tensor) -> Tensor:
    """Stretches each channel to 0-255 (torchvision's truncates the maximum to 254); flat channels stay."""
    x = images.float()
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, 255.0 / (high - low))
    return _to_uint8((x - torch.where(flat, 0.0, low)).mul_(scale))


def _equalize(images: Tensor, m: Tensor) -> Tensor:
    return TF.equalize(images)


def _brightness(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, torch.zeros((), device=images.device), m)


def _color(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, _grey(images.float()), m)


def _contrast(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, _grey(images.float()).mean((1, 2, 3), keepdim=True), m)


def _sharpness(images: Tensor, m: Tensor) -> Tensor:
    x = images.float()
    cols = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = cols[..., :-2] + cols[..., 1:-1] + cols[..., 2:]  # 3x3 sums of the interior pixels
    smooth = x.clone()
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 on the interior; the border stays as is
    smooth[..., 1:-1, 1:-1] = box.add_(x[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).round_()
    return _blend(images, smooth, m)


def _posterize(images: Tensor, m: Tensor) -> Tensor:
    bits = m.floor().clamp(0, 8).to(torch.int64)
    mask = (256 - (1 << (8 - bits))).to(torch.uint8)
    return images & mask.view(-1, 1, 1, 1)


def _solarize(images: Tensor, m: Tensor) -> Tensor:
    return torch.where(images >= m.view(-1, 1, 1, 1), 255 - images, images)


def _affine(images: Tensor, matrix: Tensor, shift: Tensor) -> Tensor:
    """Nearest-neighbour warp about the image centre, 0 outside: source = matrix @ target + shift, in pixels."""
    n, c, h, w = images.shape
    ys = torch.arange(h, dtype=torch.float32, device=images.device).sub_(h / 2 - 0.5).view(1, h, 1)  # centred
    xs = torch.arange(w, dtype=torch.float32, device=images.device).sub_(w / 2 - 0.5).view(1, 1, w)
    a = matrix.reshape(n, 4, 1, 1)
    src_x = (a[:, 0] * xs + a[:, 1] * ys).add_((shift[:, 0] + (w / 2 - 0.5)).view(n, 1, 1)).round_()
    src_y = (a[:, 2] * xs + a[:, 3] * ys).add_((shift[:, 1] + (h / 2 - 0.5)).view(n, 1, 1)).round_()
    outside = (src_x < 0) | (src_x > w - 1) | (src_y < 0) | (src_y > h - 1)
    index = src_y.mul_(w).add_(src_x).to(torch.int64).masked_fill_(outside, h * w).view(n, 1, h * w)
    padded = nnf.pad(images.reshape(n, c, h * w), (0, 1))  # one extra black pixel for "outside"
    return padded.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def _rotate(images: Tensor, m: Tensor) -> Tensor:
    rad = torch.deg2rad(m)
    cos, sin = rad.cos(), rad.sin()
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _affine(images, matrix, torch.zeros(len(m), 2, device=m.device))


def _shear(images: Tensor, m: Tensor, row: int) -> Tensor:
    matrix = torch.eye(2, device=m.device).repeat(len(m), 1, 1)
    matrix[:, row, 1 - row] = m
    return _affine(images, matrix, torch.zeros(len(m), 2, device=m.device))


def _translate(images: Tensor, m: Tensor, axis: int) -> Tensor:
    size = images.shape[3 - axis]
    shift = torch.zeros(len(m), 2, device=m.device)
    shift[:, axis] = -m * size
    return _affine(images, torch.eye(2, device=m.device).repeat(len(m), 1, 1), shift)


OPS: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType(
    {
        "autocontrast": _autocontrast,
        "brightness": _brightness,
        "color": _color,
        "contrast": _contrast,
        "equalize": _equalize,
        "identity": _identity,
        "posterize": _posterize,
        "rotate": _rotate,
        "sharpness": _sharpness,
        "shear_x": lambda images, m: _shear(images, m, row=0),
        "shear_y": lambda images, m: _shear(images, m, row=1),
        "solarize": _solarize,
        "translate_x": lambda images, m: _translate(images, m, axis=0),
        "translate_y": lambda images, m: _translate(images, m, axis=1),
    }
)


def _is_policy_entry(entry: object) -> bool:
    pair = isinstance(entry, (tuple, list)) and len(entry) == 2
    return pair and isinstance(entry[0], str) and isinstance(entry[1], (tuple, list)) and len(entry[1]) == 2


@dataclass(frozen=True)
class AugmentConfig:
    """Weak (flips, translation) and strong (RandAugment ``policy`` with ``n_ops`` ops, cutout) settings."""

    hflip: bool = True
    vflip: bool = True
    translate: float = 0.125
    n_ops: int = 2
    cutout: float = 0.5
    policy: tuple = STRONG_POLICY

    def __post_init__(self) -> None:
        if not 0.0 <= self.translate <= 0.5:
            raise ValueError(f"augment translate must be a fraction of the size in [0, 0.5], got {self.translate}")
        if self.n_ops < 0:
            raise ValueError(f"augment n_ops must be >= 0, got {self.n_ops}")
        if not 0.0 <= self.cutout <= 1.0:
            raise ValueError(f"augment cutout must be a fraction of the size in [0, 1], got {self.cutout}")
        if self.n_ops and not self.policy:
            raise ValueError("augment policy is empty but n_ops > 0: give (op, (low, high)) pairs or set n_ops=0")
        for entry in self.policy:
            if not _is_policy_entry(entry):
                raise ValueError(f"augment policy entries must be (op_name, (low, high)), got {entry!r}")
            name, (low, high) = entry
            if name not in OPS:
                raise ValueError(f"unknown augment op {name!r} in policy; known ops: {sorted(OPS)}")
            if not low <= high:
                raise ValueError(f"augment op {name!r} has an empty range ({low}, {high}); need low <= high")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise ValueError(f"expected a torch.Tensor of uint8 images (N, 3, H, W), got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (0-255), got dtype {images.dtype}; convert before augmenting")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[2:]) < _MIN_SIDE:
        raise ValueError(f"images must be at least {_MIN_SIDE}x{_MIN_SIDE} pixels, got {tuple(images.shape[2:])}")


def _reflect(index: Tensor, size: int) -> Tensor:
    """Maps any integer index into [0, size) by reflection without repeating the edge (torch 'reflect')."""
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def _axis_index(
    n: int, size: int, flip: bool, translate: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Per-image source index along one axis (on ``device``): a reflected shift in [-pad, pad], then an
    optional flip."""
    pad = int(translate * size)
    shift = torch.randint(-pad, pad + 1, (n, 1), generator=generator)
    index = _reflect(torch.arange(size) + shift, size)
    if flip:
        flipped = torch.rand(n, 1, generator=generator) < 0.5
        index = torch.where(flipped, size - 1 - index, index)
    return index.to(device, non_blocking=True)


def gather_rows_cols(images: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``out[i, :, y, x] = images[i, :, rows[i, y], cols[i, x]]`` as one batched gather per axis: two kernels
    instead of 2n (the GPU path of ``weak_augment``; the CPU loops per image, ~3x faster there)."""
    n, c, h, w = images.shape
    rows_of = images.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    return rows_of.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def weak_augment(images: Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> Tensor:
    """Random flips and reflect-padded random translation; returns a new uint8 (N, 3, H, W) tensor."""
    _check_images(images)
    n, c, h, w = images.shape
    rows = _axis_index(n, h, cfg.vflip, cfg.translate, generator, images.device)
    cols = _axis_index(n, w, cfg.hflip, cfg.translate, generator, images.device)
    if images.device.type != "cpu":
        return gather_rows_cols(images, rows, cols)
    out = torch.empty(n, c, h, w, dtype=torch.uint8)
    for i in range(n):  # per-image index_select beats one batched gather on CPU by ~3x
        torch.index_select(images[i].index_select(1, rows[i]), 2, cols[i], out=out[i])
    return out


def _rand_augment(images: Tensor, generator: torch.Generator, policy: tuple, n_ops: int) -> Tensor:
    """Applies ``n_ops`` rounds; each image draws its op and magnitude per round.

    Each round sorts the batch by op so that every op runs once on a contiguous slice."""
    n = len(images)
    ranges = torch.tensor([bounds for _, bounds in policy], dtype=torch.float32)
    for _ in range(n_ops):
        choice = torch.randint(len(policy), (n,), generator=generator)
        u = torch.rand(n, generator=generator)
        low, high = ranges[choice].unbind(1)
        order = torch.argsort(choice, stable=True)
        magnitude = (low + (high - low) * u)[order].to(images.device, non_blocking=True)
        inverse = torch.argsort(order).to(images.device, non_blocking=True)
        grouped = images.index_select(0, order.to(images.device, non_blocking=True))
        start = 0
        for (name, _), count in zip(policy, torch.bincount(choice, minlength=len(policy)).tolist()):
            stop = start + count
            if count and name != "identity":
                grouped[start:stop] = OPS[name](grouped[start:stop], magnitude[start:stop])
            start = stop
        images = grouped.index_select(0, inverse)
    return images


def _cutout(images: Tensor, generator: torch.Generator, fraction: float) -> Tensor:
    """Sets a square of side in (0, fraction * min(H, W)], centred anywhere (clipped), to grey. In place."""
    n, _, h, w = images.shape
    side = ((1.0 - torch.rand(n, generator=generator)) * fraction * min(h, w)).ceil()
    centre = torch.rand(n, 2, generator=generator) * torch.tensor([h, w])
    start = (centre - side[:, None] / 2).floor().to(images.device, non_blocking=True)
    stop = start + side.to(images.device, non_blocking=True)[:, None]
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    in_rows = (rows >= start[:, :1]) & (rows < stop[:, :1])
    in_cols = (cols >= start[:, 1:]) & (cols < stop[:, 1:])
    return images.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], CUTOUT_FILL)


def strong_augment(images: Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> Tensor:
    """Weak augmentation, then RandAugment (random magnitudes), then Cutout; returns a new tensor."""
    out = weak_augment(images, generator, cfg)
    if cfg.n_ops:
        out = _rand_augment(out, generator, cfg.policy, cfg.n_ops)
    if cfg.cutout > 0:
        out = _cutout(out, generator, cfg.cutout)
    return out


def apply_op(images: Tensor, op: str, magnitude: float) -> Tensor:
    """Applies one policy op to every image of a uint8 (N, 3, H, W) batch at one magnitude."""
    _check_images(images)
    if op not in OPS:
        raise ValueError(f"unknown augment op {op!r}; known ops: {sorted(OPS)}")
    return OPS[op](images, torch.full((len(images),), float(magnitude), device=images.device))

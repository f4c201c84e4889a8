"""Frozen-trunk feature cache (``fixmatch.cached_views``): with ``fixmatch.freeze_blocks`` k the stem and
the first k blocks keep their ImageNet weights and BatchNorm statistics, so their output for a given
image (and augmented view of it) never changes during training. The cache computes that output once per
image and view and trains only the tail (the remaining blocks, the head convolution and the classifier)
on it. With most of the network frozen the saving is large (5 blocks at 160 px: a step about a quarter of
the uncached one); with 3 frozen the tail dominates a step and little is saved (README, the study).

Per image the cache holds the plain view (pseudo-labels and scoring) and, on first use, ``4 * views``
weak views (labelled batches: few images, drawn in every step) or ``views`` strong views (the unlabelled
consistency term). Each image's views are drawn from a generator seeded by the image's content and the
trainer's seed, so they do not depend on the order images are first seen in: a resumed run draws the same
views (its outputs equal to float rounding: the trunk may batch them differently). Which view a step uses
comes from the trainer's own (checkpointed) generator. The cache keeps float32 outputs up to
``MAX_BYTES`` (6 GiB); past that, outputs are computed each time they are needed. Images are keyed by a
hash of their pixels, so callers pass the same uint8 arrays as to the uncached trainer."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from training.augment import AugmentConfig, strong_augment, weak_augment

KINDS = ("clean", "weak", "strong")
#: Labelled images (few, and drawn in every batch) get this many times ``views`` weak views.
WEAK_VIEW_FACTOR = 4
#: Above this many bytes of cached outputs, further images' outputs are computed when needed and not kept.
MAX_BYTES = 6 * 2**30


def trunk_forward(model: nn.Module, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) -> the output of the modules ``fixmatch.freeze_blocks`` = ``blocks`` freezes."""
    from training.trainer import frozen_modules

    h = model.normalize(x)
    for module in frozen_modules(model, blocks):
        h = module(h)
    return h


def tail_forward(model: nn.Module, h: torch.Tensor, blocks: int, pre_logits: bool = False) -> torch.Tensor:
    """The rest of the network from ``trunk_forward``'s output: ``tail_forward(trunk_forward(x)) == model(x)``."""
    b = model.backbone
    for block in list(b.blocks)[blocks:]:
        h = block(h)
    return b.forward_head(b.bn2(b.conv_head(h)), pre_logits=pre_logits)


def image_keys(images: np.ndarray) -> list[bytes]:
    """A 16-byte hash of each image's pixels (and shape)."""
    out = []
    for im in images:
        h = hashlib.blake2b(np.ascontiguousarray(im).data, digest_size=16)
        h.update(repr(im.shape).encode())
        out.append(h.digest())
    return out


class TrunkCache:
    """Trunk outputs of the plain view and of ``views`` weak and strong views per image (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        blocks: int,
        views: int,
        seed: int,
        augment: AugmentConfig,
        device: torch.device,
        memory_format: torch.memory_format = torch.channels_last,
        batch_size: int = 64,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if blocks < 1:
            raise ValueError("fixmatch.cached_views needs fixmatch.freeze_blocks >= 1 (a frozen trunk to cache)")
        if views < 1:
            raise ValueError(f"the trunk cache needs at least 1 view per kind, got {views}")
        self.model, self.blocks, self.views, self.seed = model, blocks, views, seed
        self.augment, self.device, self.memory_format, self.batch_size = augment, device, memory_format, batch_size
        self.max_bytes = max_bytes
        self.reset(seed)

    def n_views(self, kind: str) -> int:
        return {"clean": 1, "weak": self.views * WEAK_VIEW_FACTOR, "strong": self.views}[kind]

    def reset(self, seed: int) -> None:
        """Forget every cached output; later views are drawn with ``seed``."""
        self.seed = seed
        self.store: dict[str, dict[bytes, torch.Tensor]] = {kind: {} for kind in KINDS}
        self.nbytes = 0  # of the tensors in ``store``

    def __len__(self) -> int:
        return sum(len(s) for s in self.store.values())

    def _view_generator(self, key: bytes, kind: str) -> torch.Generator:
        salt = KINDS.index(kind)
        return torch.Generator().manual_seed((int.from_bytes(key[:7], "little") * 31 + self.seed * 3 + salt) % 2**62)

    @torch.inference_mode()
    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size].to(self.device).contiguous(memory_format=self.memory_format)
            out.append(trunk_forward(self.model, batch, self.blocks).float().cpu())
        return torch.cat(out)

    def _fill(self, images: np.ndarray, keys: list[bytes], kind: str) -> dict[bytes, torch.Tensor]:
        """Computes the outputs of the images not in the store; keeps them there while under ``max_bytes``,
        and returns those it could not keep."""
        from training.trainer import frozen_modules, to_nchw

        store = self.store[kind]
        todo: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in store and key not in todo:
                todo[key] = i
        if not todo:
            return {}
        for module in frozen_modules(self.model, self.blocks):
            module.eval()  # frozen: running BatchNorm statistics, as in training (the trainer keeps them so)
        x = to_nchw(images[list(todo.values())])
        computed: dict[bytes, torch.Tensor] = {}
        if kind == "clean":
            computed = dict(zip(todo, self._trunk(x)))
        else:
            fn = weak_augment if kind == "weak" else strong_augment
            n_views = self.n_views(kind)
            chunk = max(1, self.batch_size // n_views)
            keys_todo = list(todo)
            for start in range(0, len(keys_todo), chunk):
                ks = keys_todo[start : start + chunk]
                views = torch.cat(
                    [
                        fn(
                            x[j : j + 1].expand(n_views, -1, -1, -1).contiguous(),
                            self._view_generator(k, kind),
                            self.augment,
                        )
                        for j, k in enumerate(ks, start)
                    ]
                )
                h = self._trunk(views)
                computed.update(zip(ks, h.view(len(ks), n_views, *h.shape[1:])))
        unkept = {}
        for key, h in computed.items():
            h = h.clone()  # its own storage, not a view of the batch
            size = h.numel() * h.element_size()
            if self.nbytes + size <= self.max_bytes:
                store[key] = h
                self.nbytes += size
            else:
                unkept[key] = h
        return unkept

    def features(
        self, images: np.ndarray, kind: str, generator: torch.Generator | None = None, keys: list[bytes] | None = None
    ) -> torch.Tensor:
        """Trunk outputs (N, C, h, w) on the training device for uint8 NHWC ``images``: the plain view, or for
        "weak"/"strong" one of each image's cached views, chosen with ``generator``."""
        if kind not in KINDS:
            raise ValueError(f"unknown view kind {kind!r}; choose from {KINDS}")
        keys = image_keys(images) if keys is None else keys
        unkept = self._fill(images, keys, kind)
        found = [self.store[kind].get(k) for k in keys]
        found = [h if h is not None else unkept[k] for h, k in zip(found, keys)]
        if kind == "clean":
            out = torch.stack(found)
        else:
            pick = torch.randint(self.n_views(kind), (len(keys),), generator=generator).tolist()
            out = torch.stack([h[j] for h, j in zip(found, pick)])
        return out.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def score(self, model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Anomaly probabilities of uint8 NHWC ``images`` from their plain views' cached trunk outputs and
        ``model``'s tail (eval mode; its mode is restored after)."""
        was_training = model.training
        model.eval()
        try:
            out = [
                torch.softmax(
                    tail_forward(model, self.features(images[s : s + batch_size], "clean"), self.blocks).float(), 1
                )
                for s in range(0, len(images), batch_size)
            ]
        finally:
            model.train(was_training)
        return torch.cat(out)[:, 1].float().cpu().numpy() if out else np.empty(0, dtype=np.float32)

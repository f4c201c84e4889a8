"""How an image is shown to an expert (the notebook widget and the web app): the display stretch
(linear, log, asinh, zscale), brightness, contrast, channel toggles and invert, in plain numpy.

FITS measurements keep their values until the stretch (so faint structure survives), arrays from HDF5
sources are taken channel-last, and other formats are their decoded 8-bit RGB.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from anomalymatch.fits import bands_to_rgb, stretch_to_uint8
from anomalymatch.preprocessing import FitsStretch

STRETCHES = {
    "linear": FitsStretch.MINMAX,
    "log": FitsStretch.LOG,
    "asinh": FitsStretch.ASINH,
    "zscale": FitsStretch.ZSCALE,
}


def adjust_image(
    data: np.ndarray,
    stretch: str = "linear",
    brightness: float = 0.0,
    contrast: float = 1.0,
    channels: Sequence[bool] = (True, True, True),
    invert: bool = False,
) -> np.ndarray:
    """The display transform: (H, W) or (H, W, C) values of any dtype (NaN allowed) -> uint8 (H, W, 3).

    Each channel is stretched on its own (``stretch``), then ``contrast`` scales around mid-grey,
    ``brightness`` (-1..1) shifts, ``invert`` flips, and channels switched off are black."""
    if stretch not in STRETCHES:
        raise ValueError(f"unknown stretch {stretch!r}; use one of {sorted(STRETCHES)}")
    if len(channels) != 3:
        raise ValueError(f"channels needs three on/off values (R, G, B), got {len(channels)}")
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {data.shape}")
    rgb = bands_to_rgb(stretch_to_uint8(data, STRETCHES[stretch])).astype(np.float32) / 255.0
    rgb = (rgb - 0.5) * contrast + 0.5 + brightness
    np.clip(rgb, 0.0, 1.0, out=rgb)
    if invert:
        rgb = 1.0 - rgb
    rgb *= np.asarray(channels, dtype=np.float32)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def display_data(data: bytes, name: str) -> np.ndarray:
    """What a file shows before the display transform: FITS measurements as they are, other formats as
    decoded 8-bit RGB."""
    from anomalymatch.decode import ImageFormat, decode_native, sniff_format
    from anomalymatch.fits import read_fits

    if sniff_format(data, name) is ImageFormat.FITS:
        return read_fits(data)
    return decode_native(data, name)


def to_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def display_pixels(item: bytes | np.ndarray, name: str, spec=None) -> np.ndarray:
    """``display_data`` for what a source returns: file bytes, or an HDF5 row (channel-last, 1-4 bands).
    With a ``spec`` (``PreprocessSpec``) that has a ``band_matrix``, multi-band images show as the model's
    three channels (``anomalymatch.decode.decode_composite``)."""
    if spec is not None and spec.band_matrix is not None:
        from anomalymatch.decode import decode_composite

        return decode_composite(item, name, spec)
    if isinstance(item, np.ndarray):
        from anomalymatch.transform import channel_last

        return channel_last(item)
    return display_data(bytes(item), name)


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) scaled so its longer side is at most ``size`` (area resampling; never enlarged)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return pixels
    image = Image.fromarray(pixels).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
    return np.asarray(image)

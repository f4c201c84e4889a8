"""FITS reading and display stretches: measurement data (any dtype, NaN/inf) -> uint8.

Stretches work per plane (each band of a cube gets its own limits, since bands differ in zero
point and depth). Every stretch maps the plane's values through ``lo``/``hi`` limits to [0, 1],
then through a monotonic curve, then to 0..255, so brighter input never gives darker output:

- ``minmax``: linear between the finite minimum and maximum.
- ``percentile``: linear between the 0.5 and 99.5 percentiles, clipped (robust to hot pixels).
- ``asinh``: min-max, then ``asinh(x / 0.1) / asinh(1 / 0.1)`` (faint structure and bright cores).
- ``log``: min-max, then ``log(1 + 1000 x) / log(1001)`` (astropy's LogStretch default).
- ``zscale``: linear between IRAF zscale limits (``astropy.visualization.ZScaleInterval``), clipped.

Non-finite pixels: NaN and -inf become the plane's lowest finite value, +inf its highest; a plane
with no finite value, or a constant plane, becomes all zeros.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from anomalymatch.errors import FitsError
from anomalymatch.preprocessing import FitsStretch, band_matrix_hint

PERCENTILE_LIMITS = (0.5, 99.5)
ASINH_A = 0.1
LOG_A = 1000.0


def clean_nonfinite(plane: np.ndarray) -> np.ndarray:
    """Return a float32 copy with NaN/-inf set to the finite minimum and +inf to the finite maximum."""
    out = np.array(plane, dtype=np.float32, copy=True)
    finite = np.isfinite(out)
    if finite.all():
        return out
    if not finite.any():
        out[...] = 0.0
        return out
    lo = out[finite].min()
    hi = out[finite].max()
    out[np.isnan(out)] = lo
    out[np.isneginf(out)] = lo
    out[np.isposinf(out)] = hi
    return out


def _limits(plane: np.ndarray, method: FitsStretch) -> tuple[float, float]:
    if method is FitsStretch.PERCENTILE:
        lo, hi = np.percentile(plane, PERCENTILE_LIMITS)
        return float(lo), float(hi)
    if method is FitsStretch.ZSCALE:
        from astropy.visualization import ZScaleInterval

        lo, hi = ZScaleInterval().get_limits(plane)
        return float(lo), float(hi)
    return float(plane.min()), float(plane.max())


def stretch_unit(plane: np.ndarray, method: FitsStretch | str = FitsStretch.ASINH) -> np.ndarray:
    """Map one 2-D plane of measurements (any numeric dtype, NaN/inf allowed) to float32 in [0, 1]."""
    method = FitsStretch(method)
    x = clean_nonfinite(plane)
    lo, hi = _limits(x, method)
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.float32)
    x -= lo
    x *= 1.0 / (hi - lo)
    np.clip(x, 0.0, 1.0, out=x)
    if method is FitsStretch.ASINH:
        x = np.arcsinh(x / ASINH_A) / np.float32(np.arcsinh(1.0 / ASINH_A))
    elif method is FitsStretch.LOG:
        x = np.log1p(LOG_A * x) / np.float32(np.log1p(LOG_A))
    return x


def quantise_unit(x: np.ndarray) -> np.ndarray:
    """float32 values in [0, 1] (others are clipped) -> uint8, rounding half up; ``x`` is overwritten."""
    x *= 255.0
    x += 0.5
    np.clip(x, 0.0, 255.0, out=x)
    return x.astype(np.uint8)


def stretch_plane(plane: np.ndarray, method: FitsStretch | str = FitsStretch.ASINH) -> np.ndarray:
    """Map one 2-D plane of measurements (any numeric dtype, NaN/inf allowed) to uint8."""
    return quantise_unit(stretch_unit(plane, method))


def stretch_to_uint8(data: np.ndarray, method: FitsStretch | str = FitsStretch.ASINH) -> np.ndarray:
    """Stretch a 2-D (H, W) or channel-last (H, W, C) array to uint8, each channel independently."""
    if data.ndim == 2:
        return stretch_plane(data, method)
    if data.ndim != 3:
        raise FitsError(f"expected a 2-D or (H, W, C) array to stretch, got shape {data.shape}")
    out = np.empty(data.shape, dtype=np.uint8)
    for c in range(data.shape[2]):
        out[..., c] = stretch_plane(data[..., c], method)
    return out


def bands_to_rgb(image: np.ndarray) -> np.ndarray:
    """Turn a uint8 (H, W) or (H, W, 1-4 bands) stretched FITS image into (H, W, 3).

    One band is repeated as grey; two bands become (b0, mean, b1); three are used as they are;
    of four bands the first three are kept (FITS planes are bands, not alpha).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    bands = image.shape[2]
    if bands == 1:
        return np.repeat(image, 3, axis=2)
    if bands == 2:
        mid = ((image[..., 0].astype(np.uint16) + image[..., 1] + 1) // 2).astype(np.uint8)
        return np.stack([image[..., 0], mid, image[..., 1]], axis=2)
    if bands in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise FitsError(f"a FITS image needs 1-4 planes to map to RGB, got {bands}; {band_matrix_hint(bands)}")


def _to_channel_last(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C): leading length-1 axes dropped; a 3-D cube is (planes, H, W) by the FITS axis
    order (NAXIS3 slowest), except that an array whose last axis has 1-4 entries and first more is read
    as channel-last (numpy (H, W, C) arrays written to FITS as they are)."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]  # (1, 1, H, W) radio cutouts and single-plane cubes
    if array.ndim == 2:
        return array
    if array.ndim == 3:
        if array.shape[0] > 4 and array.shape[2] <= 4:
            return array
        return np.moveaxis(array, 0, 2)
    raise FitsError(f"FITS data of shape {array.shape} is not an image (need 2-D, or a 3-D cube of planes)")


def _image_hdus(hdul: object) -> Iterator[tuple[int, np.ndarray]]:
    """(index, data) of every image HDU that has data, in file order, each checked for truncation."""
    from astropy.io import fits

    for k, hdu in enumerate(hdul):  # type: ignore[call-overload]
        if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            continue
        if int(hdu.header.get("NAXIS", 0)) == 0:
            continue
        array = hdu.data
        if array is None or array.size == 0:
            continue
        _check_complete(hdu, array)
        yield k, array


def read_fits(data: bytes) -> np.ndarray:
    """Read the first image HDU that has data as (H, W) or (H, W, C) in its stored dtype; NaN/inf kept.

    BZERO/BSCALE are applied (astropy does this), so unsigned 16-bit data reads as its true values.
    A cube of any number of planes is read (channel-last); what may be done with more than 4 is the
    caller's policy (``bands_to_rgb`` refuses them, ``anomalymatch.bands`` combines them).
    """
    from astropy.io import fits

    with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
        for _, array in _image_hdus(hdul):
            return np.ascontiguousarray(_to_channel_last(array))
    raise FitsError("FITS file has no image HDU with data (tables and empty HDUs are skipped)")


def read_fits_bands(data: bytes) -> np.ndarray:
    """Every band of a FITS file as (H, W, N) in its stored dtype (promoted to a common one); NaN/inf kept.

    One image HDU with data: its planes (a 2-D image is one band, a cube (N, H, W) is N bands). Several:
    a multi-extension file, one 2-D band per image HDU in file order (an empty primary HDU is skipped);
    they must all have the same shape. ``FitsError`` otherwise.
    """
    from astropy.io import fits

    with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
        found = [(k, _to_channel_last(array)) for k, array in _image_hdus(hdul)]
    if not found:
        raise FitsError("FITS file has no image HDU with data (tables and empty HDUs are skipped)")
    if len(found) == 1:
        return np.ascontiguousarray(found[0][1])
    first_k, first = found[0]
    for k, band in found:
        if band.ndim != 2:
            raise FitsError(
                f"multi-extension FITS: HDU {k} holds a cube of shape {band.shape}; as bands, every image HDU "
                "must hold one 2-D plane (or put all bands in one cube in the primary HDU)"
            )
        if band.shape != first.shape:
            raise FitsError(
                f"multi-extension FITS: HDU {k} has shape {band.shape}, HDU {first_k} has {first.shape}; "
                "bands must share one pixel grid: cut or reproject them to the same shape"
            )
    return np.stack([band for _, band in found], axis=2)


def _check_complete(hdu: object, array: np.ndarray) -> None:
    """astropy pads a truncated data unit silently in some versions; refuse it instead."""
    header = hdu.header  # type: ignore[attr-defined]
    naxes = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, int(header["NAXIS"]) + 1)]
    expected = int(np.prod(naxes)) if naxes else 0
    if array.size != expected:
        raise FitsError(f"FITS data unit holds {array.size} values, header says {expected}: file truncated")

"""N survey bands -> the model's 3 channels: a stretch per band, then the spec's channel-combination matrix.

The one code path for multi-band input, used by training, bulk scoring and the service alike (through
``anomalymatch.decode.decode_image`` and ``anomalymatch.transform.to_model_size``) whenever the spec has a
``band_matrix`` M (3 rows, N columns):

1. decode to bands (H, W, N): a FITS cube's planes, a multi-extension FITS file's image HDUs in file order
   (``anomalymatch.fits.read_fits_bands``), an HDF5 row's or a TIFF's channels, a PNG/JPEG's channels;
2. stretch band n to [0, 1] with ``spec.band_stretches()[n]`` (``anomalymatch.fits.stretch_unit``: its own
   limits per band; NaN and -inf become the band's lowest finite value, +inf its highest, as for FITS).
   Every band is stretched whatever its dtype (uint8 bands too): with a matrix, all input is measurement;
3. channel c = sum_n M[c][n] * band_n, clipped to [0, 1], then to uint8 rounding half up (as a FITS stretch);
4. centre-crop and resize like every other image (``anomalymatch.transform.resize_rgb``).

A row with a single weight 1 reproduces that band's stretch exactly, so a matrix selecting 3 bands gives
the same pixels as decoding a 3-plane file of those bands without a matrix. Errors (``DecodeError``, the
image is skipped with the reason): a band count other than N, and a band with no finite value that the
matrix uses (a band whose column is all zero is never read, so missing coverage there does no harm).
"""

from __future__ import annotations

import numpy as np

from anomalymatch.errors import DecodeError
from anomalymatch.fits import quantise_unit, stretch_unit
from anomalymatch.preprocessing import PreprocessSpec


def combine_bands(bands: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(H, W) or channel-last (H, W, N) bands of any numeric dtype -> uint8 (H, W, 3) at the same size."""
    assert spec.band_matrix is not None, "combine_bands needs a spec with a band_matrix"
    bands = np.asarray(bands)
    if bands.ndim == 2:
        bands = bands[:, :, None]
    if bands.ndim != 3 or min(bands.shape[:2]) < 1:
        raise DecodeError(f"expected bands as an (H, W) or (H, W, N) array, got shape {bands.shape}")
    if bands.dtype.kind not in "biuf":
        raise DecodeError(f"cannot use pixel type {bands.dtype} as bands (need integers or floats)")
    expected, found = spec.bands, bands.shape[2]
    if found != expected:
        raise DecodeError(
            f"the image has {found} band(s) but preprocess.band_matrix combines {expected} (its width); "
            f"give every image the same {expected} bands in the same order, or train a model whose "
            f"band_matrix has 3 rows of {found} weights (a model's matrix is fixed when it is trained)"
        )
    weights = np.asarray(spec.band_matrix, dtype=np.float32)
    out = np.zeros((*bands.shape[:2], 3), dtype=np.float32)
    for n, stretch in enumerate(spec.band_stretches()):
        column = weights[:, n]
        if not column.any():
            continue  # unused band: never read, so missing coverage there does no harm
        plane = bands[..., n]
        if bands.dtype.kind == "f" and not np.isfinite(plane).any():
            raise DecodeError(
                f"band {n} of {found} has no finite value (all NaN/inf: no data in that band?); the "
                f"band_matrix uses it (column {n} = {column.tolist()}): fill the band, drop the image, or "
                f"train with a band_matrix whose column {n} is zero"
            )
        unit = stretch_unit(plane, stretch)
        for c in range(3):
            if column[c]:
                out[..., c] += column[c] * unit
    return quantise_unit(out)

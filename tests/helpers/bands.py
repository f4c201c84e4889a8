"""Multi-band test data from real GZ1 galaxies (../shared/data/gz1): five float32 bands per galaxy, the
SDSS colour cutout's R, G and B channels plus two derived bands (the mean of the three, and G - R, which is
negative in places), written as a FITS cube, a multi-extension FITS file and an HDF5 (N, H, W, 5) array.
No pytest here: the fixtures that use these live in the test modules."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GZ1_ZIP = DATA / "gz1" / "images.zip"
SIDE = 96  # centre cutout of the 423 px images: the galaxy and some sky, real pixel values throughout


def gz1_jpeg(index: int = 0) -> bytes:
    """The file bytes of one GZ1 galaxy (a 423 px colour JPEG)."""
    with zipfile.ZipFile(GZ1_ZIP) as zf:
        return zf.read(sorted(zf.namelist())[index])


def gz1_bands(count: int = 3) -> list[np.ndarray]:
    """``count`` real GZ1 galaxies (the first members of the archive) as float32 (5, SIDE, SIDE) stacks."""
    from PIL import Image

    stacks = []
    with zipfile.ZipFile(GZ1_ZIP) as zf:
        for name in sorted(zf.namelist())[:count]:
            rgb = np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB"), dtype=np.float32)
            top = (rgb.shape[0] - SIDE) // 2
            left = (rgb.shape[1] - SIDE) // 2
            r, g, b = np.moveaxis(rgb[top : top + SIDE, left : left + SIDE], 2, 0)
            stacks.append(np.stack([r, g, b, (r + g + b) / 3.0, g - r]).astype(np.float32))
    return stacks


def fits_cube(bands: np.ndarray) -> bytes:
    """One primary HDU holding the (N, H, W) cube."""
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(bands).writeto(buf)
    return buf.getvalue()


def fits_mef(planes: list[np.ndarray]) -> bytes:
    """An empty primary HDU, then one image extension per 2-D plane (named B0, B1, ...)."""
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(p, name=f"B{k}") for k, p in enumerate(planes)]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def write_hdf5(path: Path, stacks: list[np.ndarray], channel_first: bool = False) -> Path:
    """The stacks as ``images`` (N, H, W, C) (or (N, C, H, W)) float32 with ``ids`` gal_0, gal_1, ..."""
    import h5py

    cube = np.stack(stacks)  # (N, C, H, W)
    with h5py.File(path, "w") as f:
        f["images"] = cube if channel_first else np.moveaxis(cube, 1, 3)
        f["ids"] = np.array([f"gal_{i}" for i in range(len(stacks))], dtype="S")
    return path

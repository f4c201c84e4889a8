"""Synthetic test images and the files written from them: deterministic arrays (``SYNTH``), encoders for
every supported format, the valid and broken file sets the ``tests/conftest.py`` fixtures write, and
``H5Fixture``, what an HDF5 fixture file holds. No pytest here: fixtures stay in conftest."""

from __future__ import annotations

import functools
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

H, W = 40, 48


def gradient_rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Smooth RGB gradients with a little texture (compresses well, survives JPEG)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127 + 100 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0)
    rgb = np.stack([r, g, b], axis=2) + rng.normal(0, 2, (h, w, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def synthetic_arrays() -> dict[str, np.ndarray]:
    rgb = gradient_rgb()
    grey16 = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))  # increases along x
    sky = np.random.default_rng(1).normal(100.0, 5.0, (H, W)).astype(np.float32)
    sky[20, 24] = 5000.0  # a bright star
    sky[0, 0] = np.nan
    sky[0, 1] = np.inf
    sky[0, 2] = -np.inf
    cube = np.stack(
        [
            np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1)),
            np.tile(np.linspace(0, 1, H, dtype=np.float32)[:, None], (1, W)),
            np.full((H, W), 3.0, np.float32),
        ]
    )
    cube[2, H // 2 :, :] = 4.0
    return {
        "rgb": rgb,
        "grey": rgb[..., 1].copy(),
        "rgba": np.concatenate([rgb, np.full((H, W, 1), 7, np.uint8)], axis=2),
        "la": np.stack([rgb[..., 0], np.full((H, W), 9, np.uint8)], axis=2),
        "grey16": grey16,
        "rgb16": np.stack([grey16, grey16[:, ::-1], np.full((H, W), 30000, np.uint16)], axis=2),
        "sky": sky,
        "cube": cube,
    }


SYNTH = synthetic_arrays()


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_tiff(array: np.ndarray, planar: bool = False) -> bytes:
    import tifffile

    buf = io.BytesIO()
    if planar:
        tifffile.imwrite(buf, np.moveaxis(array, 2, 0), planarconfig="separate", photometric="rgb")
    else:
        photometric = "rgb" if array.ndim == 3 and array.shape[2] in (3, 4) else "minisblack"
        extra = {"extrasamples": ["unassalpha"]} if array.ndim == 3 and array.shape[2] in (2, 4) else {}
        tifffile.imwrite(buf, array, photometric=photometric, **extra)
    return buf.getvalue()


def encode_fits(array: np.ndarray) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(array).writeto(buf)
    return buf.getvalue()


def encode(name: str, array: np.ndarray) -> bytes:
    """Encode ``array`` in the format its file name's extension asks for."""
    suffix = name.lower().rsplit(".", 1)[-1]
    encoders = {
        "png": encode_png,
        "jpg": encode_jpeg,
        "jpeg": encode_jpeg,
        "tif": encode_tiff,
        "tiff": encode_tiff,
        "fits": encode_fits,
    }
    if suffix not in encoders:
        raise ValueError(f"no encoder for {name}; use .png, .jpg, .tif or .fits")
    return encoders[suffix](array)


@functools.cache
def valid_files() -> dict[str, bytes]:
    """Relative path -> file bytes of every file in ``image_dir`` (and ``image_zip``)."""
    s = SYNTH
    sky_fits = encode_fits(s["sky"])
    return {
        "rgb.png": encode_png(s["rgb"]),
        "grey.png": encode_png(s["grey"]),
        "rgba.png": encode_png(s["rgba"]),
        "grey16.png": encode_png(s["grey16"]),
        "photo.jpg": encode_jpeg(s["rgb"]),
        "grey.jpeg": encode_jpeg(s["grey"]),
        "tiff/u8_1ch.tif": encode_tiff(s["grey"]),
        "tiff/u8_2ch.tif": encode_tiff(s["la"]),
        "tiff/u8_3ch.tif": encode_tiff(s["rgb"]),
        "tiff/u8_4ch.tiff": encode_tiff(s["rgba"]),
        "tiff/u16_1ch.tif": encode_tiff(s["grey16"]),
        "tiff/u16_3ch.tif": encode_tiff(s["rgb16"]),
        "tiff/u16_3ch_planar.tif": encode_tiff(s["rgb16"], planar=True),
        "fits/sky.fits": sky_fits,
        "fits/sky.fits.gz": gzip.compress(sky_fits),
        "fits/cube.fits": encode_fits(s["cube"]),
        "fits/radio.fit": encode_fits(s["sky"][None, None]),
        "nested/deeper/rgb_copy.png": encode_png(s["rgb"]),
    }


BROKEN_EXPECTED = {  # entry -> a word its skip reason must contain
    "corrupt.png": "unknown image format",
    "truncated.jpg": "jpeg",
    "empty.png": "empty",
    "text_named.fits": "named like fits",
    "notes.txt": "unsupported file type",
    "table.csv": "unsupported file type",
    ".hidden.png": "hidden",
    "sub/.DS_Store": "hidden",
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def corrupt_bytes() -> bytes:
    return np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def truncated_jpeg() -> bytes:
    data = encode_jpeg(gradient_rgb(64, 64, seed=4))
    return data[: len(data) // 2]


@dataclass(frozen=True)
class H5Fixture:
    """An HDF5 file and what it holds: the rows as written (raw arrays or encoded bytes) and ids."""

    path: Path
    images: list
    ids: list[str]


def fits_bomb_gz(width: int, height: int, bitpix: int = -32, zero_bytes: int = 8 << 20) -> bytes:
    """A gzipped FITS whose header declares a ``width`` x ``height`` image, then ``zero_bytes`` of zeros."""
    cards = [
        "SIMPLE  =                    T",
        f"BITPIX  = {bitpix:>20}",
        "NAXIS   =                    2",
        f"NAXIS1  = {width:>20}",
        f"NAXIS2  = {height:>20}",
        "END",
    ]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [deflate.compress(header)]
    chunk = b"\0" * (1 << 20)
    for _ in range(zero_bytes // len(chunk)):
        parts.append(deflate.compress(chunk))
    return b"".join(parts) + deflate.flush()

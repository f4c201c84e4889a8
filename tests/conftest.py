"""Shared fixtures: real synthetic image files of every supported kind, written once per session.

All images are small (40 x 48 unless noted) and deterministic. ``SYNTH`` holds the arrays the
files were written from, so tests can compare decoded pixels with what went in.

Session fixtures (read-only, do not modify the files):
- ``image_dir``: a folder with one valid file per kind (PNG, JPEG, TIFF 8/16-bit 1-4 channels,
  planar TIFF, FITS 2-D with NaN/inf, FITS cube, (1, 1, H, W) FITS, gzipped FITS), nested folders.
- ``image_zip``: a zip archive holding exactly the files of ``image_dir`` under the same names.
- ``broken_dir``: two valid PNGs plus a corrupt, a truncated, an empty and a mislabelled file,
  a text file and hidden files; ``BROKEN_EXPECTED`` maps each bad entry to a word of its reason.
- ``corrupt_file`` / ``truncated_file``: single bad files.
- ``hdf5_files``: dict of ``H5Fixture(path, images, ids)`` for raw uint8 with ids, raw uint16
  without ids, raw float channel-first, encoded vlen bytes (with one corrupt row) and opaque bytes.
Function fixture:
- ``make_image_folder(files)``: writes ``{relative path: array or bytes}`` under ``tmp_path``
  (arrays are encoded by extension: .png .jpg .tif .fits) and returns the folder.
"""
from __future__ import annotations

import functools
import gzip
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

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


def _synthetic_arrays() -> dict[str, np.ndarray]:
    rgb = gradient_rgb()
    grey16 = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))  # increases along x
    sky = np.random.default_rng(1).normal(100.0, 5.0, (H, W)).astype(np.float32)
    sky[20, 24] = 5000.0  # a bright star
    sky[0, 0] = np.nan
    sky[0, 1] = np.inf
    sky[0, 2] = -np.inf
    cube = np.stack([np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1)),
                     np.tile(np.linspace(0, 1, H, dtype=np.float32)[:, None], (1, W)),
                     np.full((H, W), 3.0, np.float32)])
    cube[2, H // 2:, :] = 4.0
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


SYNTH = _synthetic_arrays()


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
    encoders = {"png": encode_png, "jpg": encode_jpeg, "jpeg": encode_jpeg, "tif": encode_tiff,
                "tiff": encode_tiff, "fits": encode_fits}
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


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: OpenMP threads contend (20x slower), one thread does not.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("images"), valid_files())


@pytest.fixture(scope="session")
def image_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zip") / "images.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data in sorted(valid_files().items(), reverse=True):  # out of order on purpose
            zf.writestr(rel, data)
    return path


def _corrupt_bytes() -> bytes:
    return np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def _truncated_jpeg() -> bytes:
    data = encode_jpeg(gradient_rgb(64, 64, seed=4))
    return data[: len(data) // 2]


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {
        "good_a.png": encode_png(gradient_rgb(seed=5)),
        "sub/good_b.png": encode_png(gradient_rgb(seed=6)),
        "corrupt.png": _corrupt_bytes(),
        "truncated.jpg": _truncated_jpeg(),
        "empty.png": b"",
        "text_named.fits": b"this is not a FITS file\n",
        "notes.txt": b"notes\n",
        "table.csv": b"a,b\n1,2\n",
        ".hidden.png": encode_png(gradient_rgb(seed=7)),
        "sub/.DS_Store": b"\x00\x00\x00\x01Bud1",
    }
    return _write_tree(tmp_path_factory.mktemp("broken"), files)


@pytest.fixture(scope="session")
def corrupt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "corrupt.png"
    path.write_bytes(_corrupt_bytes())
    return path


@pytest.fixture(scope="session")
def truncated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "truncated.jpg"
    path.write_bytes(_truncated_jpeg())
    return path


@dataclass(frozen=True)
class H5Fixture:
    """An HDF5 file and what it holds: the rows as written (raw arrays or encoded bytes) and ids."""

    path: Path
    images: list
    ids: list[str]


@pytest.fixture(scope="session")
def hdf5_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, H5Fixture]:
    import h5py

    root = tmp_path_factory.mktemp("hdf5")
    n = 7
    u8 = np.stack([gradient_rgb(24, 20, seed=i) for i in range(n)])
    u16 = (u8[..., 0].astype(np.uint16) * 257)
    f32 = np.moveaxis(u8.astype(np.float32) / 255.0, 3, 1)  # (N, C, H, W)
    ids = [f"obj_{i:03d}" for i in range(n)]
    blobs = [encode_png(u8[i]) if i % 2 else encode_jpeg(u8[i]) for i in range(n)]
    blobs[3] = _corrupt_bytes()
    out: dict[str, H5Fixture] = {}
    with h5py.File(root / "raw_u8.h5", "w") as f:
        f["images"] = u8
        f["ids"] = np.array(ids, dtype=object).astype("S")
        f["labels"] = np.arange(n)
    out["raw_u8"] = H5Fixture(root / "raw_u8.h5", list(u8), ids)
    with h5py.File(root / "raw_u16.hdf5", "w") as f:
        f.create_dataset("cutouts", data=u16, chunks=(1, 24, 20))
    out["raw_u16"] = H5Fixture(root / "raw_u16.hdf5", list(u16), [str(i) for i in range(n)])
    with h5py.File(root / "raw_f32_chw.h5", "w") as f:
        f["group/pixels"] = f32
        f["group/filenames"] = np.array([i + ".fits" for i in ids], dtype=object).astype(h5py.string_dtype())
    out["raw_f32_chw"] = H5Fixture(root / "raw_f32_chw.h5", list(f32), [i + ".fits" for i in ids])
    with h5py.File(root / "encoded.h5", "w") as f:
        ds = f.create_dataset("images", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for i, blob in enumerate(blobs):
            ds[i] = np.frombuffer(blob, np.uint8)
        f["filenames"] = np.array(ids, dtype="S")
    out["encoded"] = H5Fixture(root / "encoded.h5", blobs, ids)
    width = max(map(len, blobs))
    with h5py.File(root / "opaque.h5", "w") as f:
        f["data"] = np.array([np.void(b.ljust(width, b"\0")) for b in blobs])
        f["ids"] = np.arange(100, 100 + n)
    out["opaque"] = H5Fixture(root / "opaque.h5", blobs, [str(100 + i) for i in range(n)])
    return out


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[[dict[str, np.ndarray | bytes]], Path]:
    """Factory: write ``{relative path: array or bytes}`` under ``tmp_path/images`` and return it."""

    def make(files: dict[str, np.ndarray | bytes]) -> Path:
        encoded = {rel: v if isinstance(v, bytes) else encode(rel, v) for rel, v in files.items()}
        return _write_tree(tmp_path / "images", encoded)

    return make

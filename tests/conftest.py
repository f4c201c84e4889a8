"""Shared fixtures: real synthetic image files of every supported kind, written once per session.

All images are small (40 x 48 unless noted) and deterministic. The helpers that make them (encoders,
``SYNTH``, the arrays the files were written from, ``valid_files``, ``BROKEN_EXPECTED``) live in
``tests.helpers.images``: tests import them from there, never from this file.

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

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.images import (
    H5Fixture,
    corrupt_bytes,
    encode,
    encode_jpeg,
    encode_png,
    gradient_rgb,
    truncated_jpeg,
    valid_files,
    write_tree,
)


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
    return write_tree(tmp_path_factory.mktemp("images"), valid_files())


@pytest.fixture(scope="session")
def image_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zip") / "images.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data in sorted(valid_files().items(), reverse=True):  # out of order on purpose
            zf.writestr(rel, data)
    return path


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {
        "good_a.png": encode_png(gradient_rgb(seed=5)),
        "sub/good_b.png": encode_png(gradient_rgb(seed=6)),
        "corrupt.png": corrupt_bytes(),
        "truncated.jpg": truncated_jpeg(),
        "empty.png": b"",
        "text_named.fits": b"this is not a FITS file\n",
        "notes.txt": b"notes\n",
        "table.csv": b"a,b\n1,2\n",
        ".hidden.png": encode_png(gradient_rgb(seed=7)),
        "sub/.DS_Store": b"\x00\x00\x00\x01Bud1",
    }
    return write_tree(tmp_path_factory.mktemp("broken"), files)


@pytest.fixture(scope="session")
def corrupt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "corrupt.png"
    path.write_bytes(corrupt_bytes())
    return path


@pytest.fixture(scope="session")
def truncated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "truncated.jpg"
    path.write_bytes(truncated_jpeg())
    return path


@pytest.fixture(scope="session")
def hdf5_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, H5Fixture]:
    import h5py

    root = tmp_path_factory.mktemp("hdf5")
    n = 7
    u8 = np.stack([gradient_rgb(24, 20, seed=i) for i in range(n)])
    u16 = u8[..., 0].astype(np.uint16) * 257
    f32 = np.moveaxis(u8.astype(np.float32) / 255.0, 3, 1)  # (N, C, H, W)
    ids = [f"obj_{i:03d}" for i in range(n)]
    blobs = [encode_png(u8[i]) if i % 2 else encode_jpeg(u8[i]) for i in range(n)]
    blobs[3] = corrupt_bytes()
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
        return write_tree(tmp_path / "images", encoded)

    return make

"""HDF5 image source: raw pixel arrays or encoded image bytes, one image per row.

Layouts read:

- raw: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, any numeric dtype (uint8, uint16, float...;
  converted by ``anomalymatch.transform``'s dtype policy). The channel axis is the last one when it has
  1-4 entries; else the second when that has 1-4, or fewer entries than the last; else the last. More than
  4 channels are survey bands, which ``preprocess.band_matrix`` maps to RGB (``anomalymatch.bands``);
  rows are returned channel-last, ``(H, W, C)``;
- encoded: a 1-D dataset of PNG/JPEG/TIFF/FITS file bytes stored as variable-length uint8
  (``h5py.vlen_dtype(np.uint8)``), opaque (``np.void``) or fixed-length bytes (``S``). HDF5
  variable-length *strings* cannot hold the zero bytes every PNG contains, so they are not used.

Dataset names are found automatically (``images``, ``image``, ``data``, ``x``... for images;
``ids``, ``filenames``, ``names``... for ids, which must be 1-D with one entry per row) or given
as ``images=`` / ``ids=``. Without an ids dataset (or with ``ids=False``) the ids are the row
numbers as strings.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from anomalymatch.errors import SourceError, SourceReadError
from anomalymatch.sources.base import HandlePool, ImageSource, Item

HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")
IMAGE_NAMES = ("images", "image", "imgs", "img", "cutouts", "pixels", "data", "x")
ID_NAMES = ("ids", "id", "filenames", "filename", "names", "name", "keys", "objid", "object_id", "paths")


def _is_encoded(ds: Any) -> bool:
    import h5py

    if ds.ndim != 1:
        return False
    return ds.dtype.kind in "VS" or h5py.check_vlen_dtype(ds.dtype) == np.dtype(np.uint8)


def _is_raw(ds: Any) -> bool:
    return ds.dtype.kind in "biuf" and ds.ndim in (3, 4)


def _is_channel_first(ds: Any) -> bool:
    """(N, C, H, W) rather than (N, H, W, C): see the module's layout rule."""
    if ds.ndim != 4 or ds.shape[3] <= 4:
        return False
    return ds.shape[1] <= 4 or ds.shape[1] < ds.shape[3]


def _datasets(h5: Any) -> dict[str, Any]:
    import h5py

    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:  # returning a value would stop the walk
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    h5.visititems(visit)
    return found


def _pick_images(path: Path, found: dict[str, Any], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in found:
            raise SourceError(f"{path} has no dataset {wanted!r}; datasets: {', '.join(sorted(found)) or 'none'}")
        ds = found[wanted]
        if not (_is_raw(ds) or _is_encoded(ds)):
            raise SourceError(
                f"dataset {wanted!r} in {path} has shape {ds.shape} and dtype {ds.dtype}: expected "
                "(N, H, W[, C]) numbers or 1-D encoded image bytes (vlen uint8 or opaque)"
            )
        return wanted
    usable = [name for name, ds in found.items() if _is_raw(ds) or _is_encoded(ds)]
    by_lower = {name.rsplit("/", 1)[-1].lower(): name for name in usable}
    for candidate in IMAGE_NAMES:
        if candidate in by_lower:
            return by_lower[candidate]
    if len(usable) == 1:
        return usable[0]
    few_bands = [n for n in usable if _is_encoded(found[n]) or found[n].ndim == 3 or min(found[n].shape[1::2]) <= 4]
    if len(few_bands) == 1:  # e.g. images beside a multi-band mask cube: the 1-4 channel one, as before
        return few_bands[0]
    listing = ", ".join(f"{n} {found[n].shape} {found[n].dtype}" for n in sorted(found)) or "none"
    if not usable:
        raise SourceError(
            f"no image dataset in {path}: need (N, H, W[, C]) numbers or 1-D encoded image bytes; datasets: {listing}"
        )
    raise SourceError(
        f"several possible image datasets in {path} ({', '.join(sorted(usable))}): choose one with images=NAME"
    )


def _pick_ids(path: Path, found: dict[str, Any], wanted: str | bool | None, n: int) -> str | None:
    if wanted is False:
        return None
    if isinstance(wanted, str):
        if wanted not in found:
            raise SourceError(f"{path} has no ids dataset {wanted!r}; datasets: {', '.join(sorted(found))}")
        if found[wanted].shape != (n,):
            raise SourceError(f"ids dataset {wanted!r} has shape {found[wanted].shape}, expected ({n},)")
        return wanted
    by_lower = {name.rsplit("/", 1)[-1].lower(): name for name, ds in found.items() if ds.shape == (n,)}
    return next((by_lower[c] for c in ID_NAMES if c in by_lower), None)


def _id_strings(values: np.ndarray) -> list[str]:
    if values.dtype.kind in "iu":
        return [str(int(v)) for v in values]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def chunk_cache_bytes(ds: Any) -> int:
    """For compressed (filtered) chunked data, a chunk cache that holds four of ``ds``'s chunks (1-256 MiB):
    rows are read one at a time, and HDF5's default 1 MiB cache is smaller than a typical chunk of images
    (64 x 300 x 300 bytes = 5.8 MB), so every row would decompress its whole chunk again (measured: 82
    rows/s against 3,800 with the cache). Unfiltered chunks are read in place, which the cache would
    only slow down (3,200 rows/s without it, 2,000 with it): they keep the default."""
    if not ds.chunks or ds.id.get_create_plist().get_nfilters() == 0:
        return 1 << 20
    chunk = int(np.prod(ds.chunks)) * ds.dtype.itemsize
    return int(min(max(4 * chunk, 1 << 20), 256 << 20))


def _open(path: str, dataset: str, cache_bytes: int = 1 << 20) -> tuple[Any, Any]:
    import h5py

    h5 = h5py.File(path, "r", rdcc_nbytes=cache_bytes)
    return h5, h5[dataset]


class _Handle:
    """An open file and its image dataset, closed together."""

    def __init__(self, path: str, dataset: str, cache_bytes: int) -> None:
        self.file, self.dataset = _open(path, dataset, cache_bytes)

    def close(self) -> None:
        self.file.close()


class HDF5Source(ImageSource):
    """Rows of one HDF5 dataset as images, in row order."""

    kind = "hdf5"

    def __init__(
        self, path: str | os.PathLike, images: str | None = None, ids: str | bool | None = None, prefix: str = ""
    ) -> None:
        """``images``/``ids``: dataset names (None: auto-detect; ``ids=False``: row numbers as ids)."""
        import h5py

        self.path = Path(path)
        try:
            h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise SourceError(f"{path} is not a readable HDF5 file ({exc})") from exc
        with h5:
            found = _datasets(h5)
            self.images_dataset = _pick_images(self.path, found, images)
            ds = found[self.images_dataset]
            self.encoded = _is_encoded(ds)
            self.channel_first = not self.encoded and _is_channel_first(ds)
            n = int(ds.shape[0])
            cache_bytes = chunk_cache_bytes(ds)
            self.ids_dataset = _pick_ids(self.path, found, ids, n)
            keys = _id_strings(found[self.ids_dataset][()]) if self.ids_dataset else [str(i) for i in range(n)]
        if len(set(keys)) != len(keys):
            dupes = [k for k, count in Counter(keys).most_common(3) if count > 1]
            raise SourceError(
                f"ids dataset {self.ids_dataset!r} in {path} repeats ids (e.g. {dupes}); ids must be unique: "
                "fix the file, or pass ids=False to use row numbers as ids"
            )
        super().__init__(str(path), keys, prefix)
        self._pool = HandlePool(partial(_Handle, str(self.path), self.images_dataset, cache_bytes))

    def read_at(self, index: int) -> Item:
        try:
            with self._pool.borrow() as handle:
                row = handle.dataset[index]
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise SourceReadError(f"cannot read HDF5 row {index}: {type(exc).__name__}: {exc}") from exc
        if not self.encoded:
            return np.moveaxis(row, 0, 2) if self.channel_first else row
        if isinstance(row, np.ndarray):
            return row.tobytes()
        return bytes(row.tobytes() if isinstance(row, np.void) else row)

    def close(self) -> None:
        self._pool.close()

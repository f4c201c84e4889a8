"""Image sources: folders, zip archives, HDF5 files and single images behind one small interface.

Every source lists its images once, in a deterministic order, under stable string ids:

- folder: the path relative to the folder, posix style (``sub/a.png``), sorted;
- zip: the member name, sorted;
- HDF5: the ids dataset value (bytes decoded as UTF-8), else the row index as a string; row order;
- single file: the file name.

``read_at(i)`` returns encoded bytes (files, zip members, HDF5 byte rows) or a numpy array (HDF5
raw rows). Reading is thread-safe: zip and HDF5 handles come from a pool, one handle per concurrent
reader, so decoding threads never share a file position. Sources pickle without their handles.
Entries that are clearly not images (other extensions, hidden files) are kept in ``unsupported``
as (id, reason) so reports can list them; they are never decoded.

Layout: ``base`` (the ``ImageSource`` interface, ``HandlePool``, ``ConcatSource``), ``folder``
(folders and single files), ``archive`` (zip archives) and ``hdf5`` (HDF5 files); their errors
live in ``anomalymatch.errors``. The submodules import only from ``base`` and ``anomalymatch.errors``,
never from this package, which re-exports the public names; ``open_source`` picks the right class
from the path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalymatch.decode import has_image_magic, image_format_for_name
from anomalymatch.errors import SourceError, SourceReadError
from anomalymatch.sources.archive import ZipSource
from anomalymatch.sources.base import ConcatSource, HandlePool, ImageSource, Item, unsupported_reason
from anomalymatch.sources.folder import FileSource, FolderSource, outside_roots, resolve_roots
from anomalymatch.sources.hdf5 import HDF5_SUFFIXES, HDF5Source

__all__ = [
    "HDF5_SUFFIXES",
    "ConcatSource",
    "FileSource",
    "FolderSource",
    "HDF5Source",
    "HandlePool",
    "ImageSource",
    "Item",
    "SourceError",
    "SourceReadError",
    "ZipSource",
    "open_source",
    "outside_roots",
    "resolve_roots",
    "open_sources",
    "unsupported_reason",
]


def _looks_like_image(path: Path) -> bool:
    with path.open("rb") as f:
        return has_image_magic(f.read(16))


def open_source(path: str | os.PathLike, **options: Any) -> ImageSource:
    """Open a folder, ``.zip``, ``.h5``/``.hdf5`` file or single image file as an ``ImageSource``.

    Options: ``prefix`` (prepended to every id, for all kinds); for HDF5 ``images`` and ``ids``
    (dataset names, auto-detected when omitted). ``roots``: only paths under these folders (symlinks
    resolved) may be read: a source outside is a ``SourceError``, a folder's entries outside are skipped.
    """
    p = Path(path)
    roots = options.pop("roots", None)
    if not p.exists():
        raise SourceError(f"image source not found: {path} (pass a folder, a .zip, an .h5/.hdf5 file or an image file)")
    target = outside_roots(p, resolve_roots(roots))
    if target:
        raise SourceError(f"image source {path} resolves to {target}, outside the allowed roots {list(roots)}")
    if p.is_dir():
        return FolderSource(p, roots=roots, **options)
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return ZipSource(p, **options)
    if suffix in HDF5_SUFFIXES:
        return HDF5Source(p, **options)
    if image_format_for_name(p.name) is not None or _looks_like_image(p):
        return FileSource(p, **options)
    raise SourceError(
        f"{path} is not an image source: expected a folder, .zip, .h5/.hdf5, or a PNG/JPEG/TIFF/FITS file"
    )


def open_sources(paths: Sequence[str | os.PathLike | ImageSource], **options: Any) -> ImageSource:
    """Open several sources (paths or already opened sources) as one; duplicate ids are an error."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources = [p if isinstance(p, ImageSource) else open_source(p, **options) for p in paths]
    return sources[0] if len(sources) == 1 else ConcatSource(sources)

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

Zip archives live in ``anomalymatch.zip_source`` and HDF5 files in ``anomalymatch.hdf5``;
``open_source`` picks the right class from the path.
"""
from __future__ import annotations

import bisect
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from anomalymatch.decode import has_image_magic, image_format_for_name

Item = bytes | np.ndarray
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")


class SourceError(ValueError):
    """A source cannot be opened as asked (missing path, ambiguous dataset, duplicate ids)."""


class SourceReadError(OSError):
    """One item could not be read from its container; ``reason`` goes into the skip report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unsupported_reason(relpath: str) -> str | None:
    """Why a folder or zip entry is not read as an image, or None when it looks like one."""
    parts = relpath.split("/")
    if parts[0] == "__MACOSX":
        return "macOS metadata entry, not an image"
    if any(p.startswith(".") for p in parts):
        return "hidden file, not read"
    if image_format_for_name(parts[-1]) is None:
        suffix = Path(parts[-1]).suffix.lower() or "(none)"
        return f"unsupported file type {suffix}: only PNG, JPEG, TIFF and FITS files are read"
    return None


class HandlePool:
    """Open file handles handed to one reader at a time; grows to the number of concurrent readers."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._free: list[Any] = []
        self._all: list[Any] = []

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        with self._lock:
            handle = self._free.pop() if self._free else None
        if handle is None:
            handle = self._opener()
            with self._lock:
                self._all.append(handle)
        try:
            yield handle
        finally:
            with self._lock:
                self._free.append(handle)

    def close(self) -> None:
        with self._lock:
            for handle in self._all:
                handle.close()
            self._all.clear()
            self._free.clear()

    def __getstate__(self) -> dict:
        return {"opener": self._opener}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["opener"])  # type: ignore[misc]


class ImageSource(ABC):
    """A fixed, ordered collection of images addressed by unique string ids."""

    kind = "source"

    def __init__(self, name: str, keys: Sequence[str], prefix: str = "",
                 unsupported: Sequence[tuple[str, str]] = ()) -> None:
        self.name = name
        self._ids = [prefix + k for k in keys] if prefix else list(keys)
        self._index: dict[str, int] | None = None
        self.unsupported: list[tuple[str, str]] = [(prefix + i, r) for i, r in unsupported]

    @property
    def ids(self) -> list[str]:
        """The image ids in source order (the list itself: do not modify it)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def index(self, image_id: str) -> int:
        """Position of ``image_id``; ``KeyError`` with the source name when absent."""
        if self._index is None:
            self._index = {image_id: i for i, image_id in enumerate(self._ids)}
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in source {self.name}") from None

    def read(self, image_id: str) -> Item:
        """Encoded bytes or a raw array for one image id."""
        return self.read_at(self.index(image_id))

    @abstractmethod
    def read_at(self, index: int) -> Item:
        """Encoded bytes or a raw array for the image at ``index``; ``SourceReadError`` on I/O failure."""

    def close(self) -> None:
        """Release open handles (reading again reopens them)."""

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images)"


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceReadError(f"cannot read file: {exc.strerror or exc}") from exc


class FolderSource(ImageSource):
    """Every image file below a folder (recursive, following symlinked folders once each);
    ids are posix paths relative to it."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike, prefix: str = "") -> None:
        self.root = Path(root)
        keys: list[str] = []
        skipped: list[tuple[str, str]] = []
        seen_dirs: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            stat = os.stat(dirpath)
            if (stat.st_dev, stat.st_ino) in seen_dirs:  # a symlink loop or a second link to a folder
                skipped.append((rel_dir, "folder already listed through another link, not read twice"))
                dirnames.clear()
                continue
            seen_dirs.add((stat.st_dev, stat.st_ino))
            for d in [d for d in dirnames if d.startswith(".")]:
                skipped.append((f"{rel_dir}{d}/", "hidden folder, not read"))
                dirnames.remove(d)
            for filename in filenames:
                rel = rel_dir + filename
                reason = unsupported_reason(rel)
                if reason is None:
                    keys.append(rel)
                else:
                    skipped.append((rel, reason))
        super().__init__(str(root), sorted(keys), prefix, sorted(skipped))
        self._prefix_len = len(prefix)

    def read_at(self, index: int) -> Item:
        return _read_file(self.root / self._ids[index][self._prefix_len:])


class FileSource(ImageSource):
    """One image file; its id is the file name."""

    kind = "file"

    def __init__(self, path: str | os.PathLike, prefix: str = "") -> None:
        self.path = Path(path)
        super().__init__(str(path), [self.path.name], prefix)

    def read_at(self, index: int) -> Item:
        if index != 0:
            raise IndexError(f"{self.name} holds one image, index {index} is out of range")
        return _read_file(self.path)


class ConcatSource(ImageSource):
    """Several sources one after another; ids must be unique across them."""

    kind = "concat"

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        if not sources:
            raise SourceError("no sources given: pass at least one folder, zip, HDF5 or image file")
        owner: dict[str, ImageSource] = {}
        for source in sources:
            for image_id in source.ids:
                first = owner.setdefault(image_id, source)
                if first is not source:
                    raise SourceError(
                        f"image id {image_id!r} is in both {first.name} and {source.name}; ids must be "
                        "unique across sources: open them with distinct prefixes, e.g. "
                        "open_source(path, prefix='survey_a/'), and pass the opened sources"
                    )
        keys = [image_id for source in sources for image_id in source.ids]
        unsupported = [item for source in sources for item in source.unsupported]
        super().__init__(" + ".join(s.name for s in sources), keys, "", unsupported)
        self._index = {image_id: i for i, image_id in enumerate(keys)}
        self.sources = list(sources)
        self._starts = list(np.cumsum([0] + [len(s) for s in sources[:-1]]))

    def read_at(self, index: int) -> Item:
        k = bisect.bisect_right(self._starts, index) - 1
        return self.sources[k].read_at(index - int(self._starts[k]))

    def close(self) -> None:
        for source in self.sources:
            source.close()


def _looks_like_image(path: Path) -> bool:
    with path.open("rb") as f:
        return has_image_magic(f.read(16))


def open_source(path: str | os.PathLike, **options: Any) -> ImageSource:
    """Open a folder, ``.zip``, ``.h5``/``.hdf5`` file or single image file as an ``ImageSource``.

    Options: ``prefix`` (prepended to every id, for all kinds); for HDF5 ``images`` and ``ids``
    (dataset names, auto-detected when omitted).
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(
            f"image source not found: {path} (pass a folder, a .zip, an .h5/.hdf5 file or an image file)"
        )
    if p.is_dir():
        return FolderSource(p, **options)
    suffix = p.suffix.lower()
    if suffix == ".zip":
        from anomalymatch.zip_source import ZipSource

        return ZipSource(p, **options)
    if suffix in HDF5_SUFFIXES:
        from anomalymatch.hdf5 import HDF5Source

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

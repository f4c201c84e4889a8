"""The source interface every image source implements, and the pieces the sources share.

``ImageSource``: a fixed, ordered collection of images under unique string ids; ``read_at(i)``
returns encoded bytes or a numpy array (``Item``) and raises ``SourceReadError`` on I/O failure.
``HandlePool`` gives each concurrent reader its own file handle and pickles without handles;
``unsupported_reason`` is the folder and zip rule for entries that are not read as images;
``ConcatSource`` chains sources whose ids are unique across them.

Source modules import from here and from ``anomalymatch.errors`` only, never from the
``anomalymatch.sources`` package itself.
"""

from __future__ import annotations

import bisect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from anomalymatch.decode import image_format_for_name
from anomalymatch.errors import SourceError

Item = bytes | np.ndarray


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

    def __init__(
        self, name: str, keys: Sequence[str], prefix: str = "", unsupported: Sequence[tuple[str, str]] = ()
    ) -> None:
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

    def close(self) -> None:  # noqa: B027 (a no-op unless the source holds handles)
        """Release open handles (reading again reopens them)."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images)"


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

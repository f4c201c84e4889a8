"""Sources on the file system: every image file below a folder, or one image file.

Folder ids are the paths relative to the folder, posix style (``sub/a.png``), sorted; hidden
files and folders, macOS metadata and other file types are listed in ``unsupported`` with a
reason and never read. A single file's id is its file name.

``roots`` (a service's data roots) is a security boundary: every entry is resolved (symlinks followed)
and one that lands outside all roots is listed in ``unsupported`` and never read (a symlinked folder
pointing outside is not walked).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from anomalymatch.errors import SourceError, SourceReadError
from anomalymatch.sources.base import ImageSource, Item, unsupported_reason


def resolve_roots(roots: Sequence[str | os.PathLike] | None) -> tuple[Path, ...] | None:
    """Roots as resolved absolute paths (None: no boundary)."""
    return None if roots is None else tuple(Path(r).expanduser().resolve() for r in roots)


def outside_roots(path: str | os.PathLike, roots: tuple[Path, ...] | None) -> str:
    """'' if ``path`` (symlinks resolved) lies under one of ``roots`` (or there is no boundary), else the
    resolved path, for the reason that names it."""
    if roots is None:
        return ""
    resolved = Path(os.path.realpath(path))
    return "" if any(resolved.is_relative_to(root) for root in roots) else str(resolved)


def _link_reason(path: Path, roots: tuple[Path, ...] | None) -> str | None:
    """Why ``path`` is not read (its link leads outside ``roots``), or None."""
    target = outside_roots(path, roots)
    return f"links to {target}, outside the allowed roots: not read" if target else None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceReadError(f"cannot read file: {exc.strerror or exc}") from exc


class FolderSource(ImageSource):
    """Every image file below a folder (recursive, following symlinked folders once each);
    ids are posix paths relative to it."""

    kind = "folder"

    def __init__(
        self, root: str | os.PathLike, prefix: str = "", roots: Sequence[str | os.PathLike] | None = None
    ) -> None:
        self.root = Path(root)
        allowed = resolve_roots(roots)
        target = outside_roots(self.root, allowed)
        if target:
            raise SourceError(f"{root} resolves to {target}, outside the allowed roots")
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
            for d in list(dirnames):
                reason = "hidden folder, not read" if d.startswith(".") else _link_reason(Path(dirpath) / d, allowed)
                if reason:
                    skipped.append((f"{rel_dir}{d}/", reason))
                    dirnames.remove(d)
            for filename in filenames:
                rel = rel_dir + filename
                reason = _link_reason(Path(dirpath) / filename, allowed) or unsupported_reason(rel)
                if reason is None:
                    keys.append(rel)
                else:
                    skipped.append((rel, reason))
        super().__init__(str(root), sorted(keys), prefix, sorted(skipped))
        self._prefix_len = len(prefix)
        self._allowed = allowed

    def read_at(self, index: int) -> Item:
        path = self.root / self._ids[index][self._prefix_len :]
        reason = _link_reason(path, self._allowed)  # again now: a file may have become a link since listing
        if reason:
            raise SourceReadError(reason)
        return _read_file(path)


class FileSource(ImageSource):
    """One image file; its id is the file name."""

    kind = "file"

    def __init__(
        self, path: str | os.PathLike, prefix: str = "", roots: Sequence[str | os.PathLike] | None = None
    ) -> None:
        self.path = Path(path)
        target = outside_roots(self.path, resolve_roots(roots))
        if target:
            raise SourceError(f"{path} resolves to {target}, outside the allowed roots")
        super().__init__(str(path), [self.path.name], prefix)

    def read_at(self, index: int) -> Item:
        if index != 0:
            raise IndexError(f"{self.name} holds one image, index {index} is out of range")
        return _read_file(self.path)

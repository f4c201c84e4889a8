"""Labels: the two classes, an immutable label table, and a validating CSV reader.

Label words: ``anomaly`` and ``nominal``; the reference tool's ``normal`` reads as nominal. Matching
ignores case and surrounding whitespace. Numbers and booleans ("1", "0", "true") are rejected on purpose:
class-index columns are common (Galaxy Zoo's ``class`` holds 0..5) and would be silently misread. Map such
values explicitly with ``label_map``.

Row numbers in messages count the header as row 1, as a spreadsheet shows them.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np


class LabelError(ValueError):
    """A label value or label file is invalid; the message says where and how to fix it."""


class Label(str, Enum):
    """The two classes an expert assigns."""

    ANOMALY = "anomaly"
    NOMINAL = "nominal"


_WORDS: dict[str, Label] = {"anomaly": Label.ANOMALY, "nominal": Label.NOMINAL, "normal": Label.NOMINAL}


def parse_label(value: str | Label, row: int | None = None) -> Label:
    """Read one label word (anomaly / nominal / normal, any case, trimmed) into a ``Label``."""
    if isinstance(value, Label):
        return value
    if isinstance(value, str):
        found = _WORDS.get(value.strip().lower())
        if found is not None:
            return found
    where = f" in row {row}" if row is not None else ""
    raise LabelError(
        f"unknown label {value!r}{where}; use 'anomaly' or 'nominal' ('normal' is read as nominal), "
        "or map class values with label_map"
    )


def _canonical_rows(ids: Iterable[str], labels: Iterable[Label]) -> Iterable[tuple[str, str]]:
    return ((i, lab.value) for i, lab in sorted(zip(ids, labels), key=lambda p: p[0]))


@dataclass(frozen=True)
class LabelTable:
    """Image ids with one label each, plus any extra CSV columns (kept as strings, one per row)."""

    ids: tuple[str, ...]
    labels: tuple[Label, ...]
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = tuple(str(i) for i in self.ids)
        labels = tuple(parse_label(v, row=None) for v in self.labels)
        extra = {str(k): tuple(str(x) for x in v) for k, v in self.extra.items()}
        if len(labels) != len(ids):
            raise LabelError(f"LabelTable got {len(ids)} ids but {len(labels)} labels; give one label per id")
        for name, column in extra.items():
            if len(column) != len(ids):
                raise LabelError(f"extra column {name!r} has {len(column)} values for {len(ids)} ids")
            if name in ("filename", "label"):
                raise LabelError(f"extra column may not be named {name!r}; it is a reserved column")
        if len(set(ids)) != len(ids):
            dups = sorted(i for i, count in Counter(ids).items() if count > 1)
            raise LabelError(f"LabelTable ids must be unique; duplicated: {dups[:10]}")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "extra", extra)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str | Label]]) -> LabelTable:
        """Build from (id, label) pairs; identical repeats collapse, conflicting ones raise ``LabelError``."""
        found: dict[str, Label] = {}
        conflicts: dict[str, set[Label]] = {}
        for image_id, value in pairs:
            label = parse_label(value)
            image_id = str(image_id)
            if image_id in found and found[image_id] != label:
                conflicts.setdefault(image_id, {found[image_id]}).add(label)
            found.setdefault(image_id, label)
        if conflicts:
            shown = sorted(conflicts)[:10]
            raise LabelError(f"{len(conflicts)} ids have conflicting labels, e.g. {shown}; keep one label per id")
        return cls(ids=tuple(found), labels=tuple(found.values()))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def y(self) -> np.ndarray:
        """Labels as int8, 1 = anomaly, 0 = nominal, in table order."""
        return np.fromiter((lab is Label.ANOMALY for lab in self.labels), dtype=np.int8, count=len(self))

    @property
    def n_anomalies(self) -> int:
        """How many rows are labelled anomaly."""
        return sum(lab is Label.ANOMALY for lab in self.labels)

    def as_dict(self) -> dict[str, Label]:
        """Map id -> label."""
        return dict(zip(self.ids, self.labels))

    def merge(self, other: LabelTable) -> LabelTable:
        """Union with ``other``; where both label an id, ``other`` (the later one) wins, extras included.
        Order: this table's ids, then ids new in ``other``; a missing extra value is ''."""
        position = {image_id: i for i, image_id in enumerate(self.ids)}
        ids = list(self.ids)
        labels = list(self.labels)
        names = list(self.extra) + [k for k in other.extra if k not in self.extra]
        extra = {k: list(self.extra.get(k, ("",) * len(self))) for k in names}
        for j, image_id in enumerate(other.ids):
            i = position.get(image_id)
            if i is None:
                i = len(ids)
                ids.append(image_id)
                labels.append(other.labels[j])
                for k in names:
                    extra[k].append("")
            else:
                labels[i] = other.labels[j]
            for k in names:
                if k in other.extra:
                    extra[k][i] = other.extra[k][j]
        return LabelTable(tuple(ids), tuple(labels), {k: tuple(v) for k, v in extra.items()})

    def to_csv_bytes(self, canonical: bool = False) -> bytes:
        """UTF-8 CSV with columns filename,label,+extras in table order, '\\n' line ends.

        ``canonical=True`` writes only filename,label sorted by id: the bytes that identify the label set."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if canonical:
            writer.writerow(["filename", "label"])
            writer.writerows(_canonical_rows(self.ids, self.labels))
        else:
            names = list(self.extra)
            writer.writerow(["filename", "label", *names])
            for i, (image_id, label) in enumerate(zip(self.ids, self.labels)):
                writer.writerow([image_id, label.value, *(self.extra[k][i] for k in names)])
        return buffer.getvalue().encode("utf-8")

    def to_csv(self, path: str | Path) -> Path:
        """Write ``to_csv_bytes()`` to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_csv_bytes())
        return path

    def sha256(self) -> str:
        """Hex SHA-256 of the canonical CSV: the same ids and labels give the same hash in any row order;
        extra columns do not count."""
        return hashlib.sha256(self.to_csv_bytes(canonical=True)).hexdigest()


def _basename(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


class _IdResolver:
    """Map CSV filenames to source ids: exact match first, else a unique basename match."""

    def __init__(self, known_ids: Collection[str]) -> None:
        self._known = known_ids if isinstance(known_ids, (set, frozenset)) else set(known_ids)
        self._by_base: dict[str, list[str]] | None = None

    def resolve(self, name: str) -> tuple[str | None, list[str]]:
        """(resolved id or None, candidates when the basename is ambiguous)."""
        if name in self._known:
            return name, []
        if self._by_base is None:
            self._by_base = {}
            for known in self._known:
                self._by_base.setdefault(_basename(known), []).append(known)
        matches = self._by_base.get(_basename(name), [])
        if len(matches) == 1:
            return matches[0], []
        return None, sorted(matches)


_FILENAME_COLUMNS = ("filename", "file", "file_name", "id", "image", "image_id", "path", "filepath")
_LABEL_COLUMNS = ("label", "class_name", "class", "category", "target")


def _pick_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: Path) -> int:
    lowered = [h.lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        raise LabelError(f"{source}: no column {wanted!r}; columns found: {header}")
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    raise LabelError(
        f"{source}: no {what} column; columns found: {header}. The first row must be a header naming "
        f"one of {list(candidates)}, or pass {what}_column="
    )


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (row number, fields) of a CSV file, skipping blank rows."""
    if not path.is_file():
        raise LabelError(f"label file not found: {path}; check the path (it must be a CSV file)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LabelError(f"{path} is not UTF-8 text ({err}); save it as UTF-8 CSV") from err
    if not text.strip():
        raise LabelError(f"{path} is empty; write a header row such as 'filename,label' and one row per image")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(n, r) for n, r in enumerate(reader, start=1) if any(cell.strip() for cell in r)]
    except csv.Error as err:
        raise LabelError(f"{path} is not valid CSV (line {reader.line_num}: {err}); fix that line") from err
    if not rows:
        raise LabelError(f"{path} has no header row; write one such as 'filename,label'")
    header = [h.strip() for h in rows[0][1]]
    if "" in header or len(set(h.lower() for h in header)) != len(header):
        raise LabelError(f"{path}: header has empty or repeated column names: {header}; name each column once")
    return header, rows[1:]


def read_labels(
    path: str | Path,
    known_ids: Collection[str] | None = None,
    filename_column: str | None = None,
    label_column: str | None = None,
    label_map: Mapping[str, str] | None = None,
) -> LabelTable:
    """Read and validate a labels CSV.

    Columns are found by name (case-insensitive) unless given: filename from filename, file, file_name, id,
    image, image_id, path, filepath; label from label, class_name, class, category, target. Other columns
    are kept in ``extra``. ``label_map`` maps raw values (trimmed, any case) to anomaly/nominal; values it
    does not name must be label words. With ``known_ids``, each filename resolves to a source id (exact,
    else unique basename). Identical duplicate rows collapse; everything else wrong raises ``LabelError``.
    A header-only file gives an empty table.
    """
    source = Path(path)
    header, rows = _read_rows(source)
    fcol = _pick_column(header, filename_column, _FILENAME_COLUMNS, "filename", source)
    lcol = _pick_column(header, label_column, _LABEL_COLUMNS, "label", source)
    if fcol == lcol:
        raise LabelError(f"{source}: filename and label must be different columns, both are {header[fcol]!r}")
    mapping: dict[str, Label] = {}
    for raw, word in (label_map or {}).items():
        try:
            mapping[str(raw).strip().lower()] = parse_label(word)
        except LabelError as err:
            raise LabelError(f"label_map[{raw!r}]: {err}") from err
    extra_cols = [i for i in range(len(header)) if i not in (fcol, lcol)]
    resolver = _IdResolver(known_ids) if known_ids is not None else None

    problems: list[str] = []
    unknown: dict[str, list[int]] = {}
    missing: list[str] = []
    ambiguous: list[str] = []
    parsed: list[tuple[int, str, Label, list[str]]] = []
    for n, fields in rows:
        if len(fields) != len(header):
            problems.append(f"row {n} has {len(fields)} fields, the header has {len(header)}")
            continue
        name = fields[fcol].strip()
        if not name:
            problems.append(f"row {n} has an empty filename")
            continue
        raw = fields[lcol].strip()
        label = mapping.get(raw.lower(), _WORDS.get(raw.lower()))
        if label is None:
            unknown.setdefault(raw, []).append(n)
            continue
        if resolver is not None:
            resolved, candidates = resolver.resolve(name)
            if resolved is None:
                if candidates:
                    ambiguous.append(f"row {n} {name!r} matches {candidates[:5]}")
                else:
                    missing.append(name)
                continue
            name = resolved
        parsed.append((n, name, label, [fields[i] for i in extra_cols]))

    if unknown:
        listed = "; ".join(f"{v!r} in rows {r[:5]}{'...' if len(r) > 5 else ''}" for v, r in unknown.items())
        problems.append(f"unknown label values: {listed}. Use 'anomaly' or 'nominal', or pass label_map to map them")
    if ambiguous:
        problems.append(
            f"{len(ambiguous)} filenames match several source images by basename: {ambiguous[:10]}; "
            "write the full relative path"
        )
    if missing:
        problems.append(
            f"{len(missing)} filenames are not in the image source, e.g. {missing[:10]}; "
            "fix the names or point at the right image folder"
        )
    first: dict[str, tuple[int, Label, list[str]]] = {}
    conflicts: list[str] = []
    for n, name, label, extras in parsed:
        if name not in first:
            first[name] = (n, label, extras)
        elif first[name][1] != label:
            conflicts.append(f"{name!r} is {first[name][1].value} in row {first[name][0]} but {label.value} in row {n}")
    if conflicts:
        problems.append(f"{len(conflicts)} conflicting duplicates: {conflicts[:10]}; keep one label per image")
    if problems:
        raise LabelError(f"{source}: " + " | ".join(problems))
    return LabelTable(
        ids=tuple(first),
        labels=tuple(v[1] for v in first.values()),
        extra={header[c]: tuple(v[2][j] for v in first.values()) for j, c in enumerate(extra_cols)},
    )

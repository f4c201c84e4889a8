"""A survey catalogue attached to a campaign: per image id its sky coordinates and any other columns.

The CSV has an id column (``id`` unless named), optional ``ra`` and ``dec`` in degrees (ICRS), and any
other columns, kept as text. Attached with ``anomalymatch catalogue attach FILE`` into the label store;
candidates, the web app and its export then carry the columns, and images with coordinates carry links
to sky viewers (``sky_links``). A bad file is refused whole, naming the rows, and nothing is stored.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from anomalymatch.labels import LabelError

MAX_ERRORS_SHOWN = 5


class CatalogueError(LabelError):
    """The catalogue file cannot be used as it is."""


@dataclass(frozen=True)
class CatalogueRow:
    image_id: str
    ra: float | None = None
    dec: float | None = None
    columns: dict[str, str] = field(default_factory=dict)


def sky_links(ra: float | None, dec: float | None) -> dict[str, str]:
    """Viewer links centred on (ra, dec) in degrees: ESASky and the Legacy Surveys viewer ({} without
    coordinates)."""
    if ra is None or dec is None:
        return {}
    target = quote(f"{ra:.6f} {dec:+.6f}")
    return {
        "esasky": f"https://sky.esa.int/esasky/?target={target}&hips=DSS2+color&fov=0.05&cooframe=J2000",
        "legacysurvey": f"https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=15",
    }


def _coordinate(value: str, name: str, low: float, high: float, row: int, errors: list[str]) -> float | None:
    if value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        errors.append(f"row {row}: {name} {value!r} is not a number")
        return None
    if not math.isfinite(number) or not low <= number <= high:
        errors.append(f"row {row}: {name} {value!r} is outside [{low:g}, {high:g}] degrees")
        return None
    return number


def read_catalogue(path: str | os.PathLike, id_column: str = "id") -> list[CatalogueRow]:
    """Rows of a catalogue CSV, validated: the id column present and unique and non-empty, ra in [0, 360],
    dec in [-90, 90] (either may be empty); ``CatalogueError`` names the problems."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            lines = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CatalogueError(f"{path} is not a readable UTF-8 CSV file: {exc}") from None
    if id_column not in header:
        raise CatalogueError(f"{path} has no {id_column!r} column (columns: {header}); name it with --id-column")
    lower = {h.lower(): h for h in header}
    ra_col, dec_col = lower.get("ra"), lower.get("dec")
    errors: list[str] = []
    seen: dict[str, int] = {}
    rows = []
    for n, line in enumerate(lines, start=2):  # row 1 is the header
        if None in line:
            errors.append(f"row {n}: more fields than the header has")
            continue
        image_id = (line.get(id_column) or "").strip()
        if not image_id:
            errors.append(f"row {n}: empty {id_column}")
            continue
        if image_id in seen:
            errors.append(f"row {n}: id {image_id!r} repeats row {seen[image_id]}")
            continue
        seen[image_id] = n
        ra = _coordinate(line.get(ra_col) or "", "ra", 0.0, 360.0, n, errors) if ra_col else None
        dec = _coordinate(line.get(dec_col) or "", "dec", -90.0, 90.0, n, errors) if dec_col else None
        columns = {k: v or "" for k, v in line.items() if k not in (id_column, ra_col, dec_col)}
        rows.append(CatalogueRow(image_id, ra, dec, columns))
    if errors:
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise CatalogueError(f"{path}: {len(errors)} bad row(s), nothing attached: {shown}{more}")
    if not rows:
        raise CatalogueError(f"{path} has a header but no rows")
    return rows

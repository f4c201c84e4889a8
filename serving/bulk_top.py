"""A bulk job's ``top.csv``: the top-N candidates, with the survey catalogue's columns when there is one.

Columns: rank, id, score, model_version, source; with a catalogue also ra, dec, one sky-viewer link per
viewer (``anomalymatch.catalogue.sky_links``: esasky, legacysurvey) and the catalogue's other columns,
sorted by name. An image's catalogue row is the one whose id is the image's id within its source, else its
file name (a job over a folder tree names ``sub/dir/objid.jpeg``; catalogues name ``objid.jpeg``).
Text cells are guarded against spreadsheet formulas (``anomalymatch.csv_cells``).

The catalogue is a callable ``ids -> {id: CatalogueRow}`` so a job can take it from a file
(``catalogue_from_file``), from the label store it is attached to (``catalogue_from_store``), or not at all.
"""

from __future__ import annotations

import csv
import logging
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from anomalymatch.catalogue import CatalogueRow, read_catalogue, sky_links
from anomalymatch.csv_cells import SafeCsvWriter

log = logging.getLogger(__name__)
Catalogue = Callable[[Sequence[str]], Mapping[str, CatalogueRow]]
TOP_COLUMNS = ["rank", "id", "score", "model_version", "source"]
LINK_COLUMNS = list(sky_links(0.0, 0.0))  # esasky, legacysurvey


def catalogue_from_file(path: str | os.PathLike, id_column: str = "id") -> Catalogue:
    """A catalogue CSV read (and validated whole) now, looked up in memory."""
    rows = {r.image_id: r for r in read_catalogue(path, id_column)}
    return lambda ids: {i: rows[i] for i in ids if i in rows}


def catalogue_from_store(labelstore_config, data_dir: str | os.PathLike) -> Catalogue | None:  # type: ignore[no-untyped-def]
    """The catalogue attached to the campaign's label store, opened only when top.csv is written; None
    when the campaign has no label store yet (a SQLite store that does not exist is not created)."""
    from anomalymatch.labelstore import LabelStore

    if not labelstore_config.url and not (Path(data_dir) / "labels.db").is_file():
        return None

    def lookup(ids: Sequence[str]) -> Mapping[str, CatalogueRow]:
        try:
            with LabelStore.from_config(labelstore_config, data_dir) as store:
                return store.catalogue_for(ids)
        except Exception as exc:  # the store is down or locked: the scores stand, top.csv goes without it
            log.warning("top.csv without catalogue columns: the label store's catalogue is unreadable (%s)", exc)
            return {}

    return lookup


def _rows_for(ids: Sequence[str], catalogue: Catalogue) -> dict[str, CatalogueRow]:
    """Each id's catalogue row: by the id itself, else by its file name."""
    names = {i: posixpath.basename(i.replace("\\", "/")) for i in ids}
    found = catalogue(sorted(set(ids) | set(names.values())))
    out = {}
    for i in ids:
        row = found.get(i) or found.get(names[i])
        if row is not None:
            out[i] = row
    return out


def write_top_csv(
    path: Path,
    ranked: Sequence[tuple[float, str, str]],
    model_version: str,
    catalogue: Catalogue | None = None,
) -> None:
    """Write ``ranked`` ((score, id, source), best first) to ``path``, with catalogue columns if given."""
    found = _rows_for([i for _, i, _ in ranked], catalogue) if catalogue is not None and ranked else {}
    extra = sorted({c for row in found.values() for c in row.columns})
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = SafeCsvWriter(csv.writer(out))
        header = TOP_COLUMNS + (["ra", "dec", *LINK_COLUMNS, *extra] if catalogue is not None else [])
        writer.writerow(header)
        for rank, (score, image_id, source) in enumerate(ranked, 1):
            row = [rank, image_id, f"{score:.6f}", model_version, source]
            if catalogue is not None:
                entry = found.get(image_id)
                ra, dec = (entry.ra, entry.dec) if entry else (None, None)
                links = sky_links(ra, dec)
                row += ["" if v is None else f"{v:.6f}" for v in (ra, dec)]
                row += [links.get(name, "") for name in LINK_COLUMNS]
                row += [entry.columns.get(c, "") if entry else "" for c in extra]
            writer.writerow(row)

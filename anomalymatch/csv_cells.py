"""CSV files that are safe to open in a spreadsheet: text cells never run as formulas.

A catalogue column or an image id (a file name) can start with ``=``, ``+``, ``-`` or ``@``; spreadsheets
run such a cell as a formula (CSV injection). Every CSV the project writes for people to open (the web
app's anomaly export, a bulk job's ``top.csv``) goes through ``SafeCsvWriter``.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A text cell starting with = + - @ (or a tab / carriage return) with a leading apostrophe; numbers,
    and text that is a number (a negative declination), as they are."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


class SafeCsvWriter:
    """Wraps a ``csv.writer``: every row's cells pass through ``safe_cell``."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def writerow(self, row: list[Any]) -> None:
        self.writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)

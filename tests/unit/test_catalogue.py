"""A survey catalogue attached to the label store: validated whole (bad rows named, nothing stored), rows
replaced by id, columns and sky links on candidates and in the web app's export, the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from anomalymatch.catalogue import CatalogueError, read_catalogue, sky_links
from anomalymatch.cli import main as cli
from anomalymatch.labelstore import LabelStore
from serving.labels_api import get_candidates
from tests.helpers.labelstore import STORE_KINDS, open_store

IDS = [f"img{i}.png" for i in range(6)]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    yield from open_store(request.param, tmp_path, IDS)


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cat.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("objid,ra,dec\nimg0.png,10,20\n", "no 'id' column"),
        ("id,ra,dec\nimg0.png,400,20\nimg1.png,1,-91\n", "2 bad row(s)"),
        ("id,ra,dec\nimg0.png,ten,20\n", "ra 'ten' is not a number"),
        ("id,ra,dec\nimg0.png,nan,20\n", "outside [0, 360]"),
        ("id,ra\nimg0.png,1\nimg0.png,2\n", "repeats row 2"),
        ("id,ra\n,1\n", "empty id"),
        ("id,ra\nimg0.png,1,extra\n", "more fields than the header"),
        ("id,ra\n", "no rows"),
    ],
)
def test_bad_catalogues_are_refused_whole(tmp_path, text, words) -> None:
    with pytest.raises(CatalogueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        read_catalogue(_csv(tmp_path, text))


def test_rows_are_attached_replaced_and_carried_by_candidates(store, tmp_path) -> None:
    rows = read_catalogue(_csv(tmp_path, "id,RA,Dec,z,survey\nimg0.png,150.1,2.2,0.31,SDSS\nimg1.png,,,0.5,\n"))
    assert store.attach_catalogue(rows + read_catalogue(_csv(tmp_path, "id\nghost.png\n"))) == (3, 2)
    assert store.attach_catalogue(read_catalogue(_csv(tmp_path, "id,ra,dec,z\nimg0.png,150.5,2.5,0.33\n"))) == (1, 1)
    found = store.catalogue_for(IDS)
    assert (found["img0.png"].ra, found["img0.png"].dec, found["img0.png"].columns) == (150.5, 2.5, {"z": "0.33"})
    assert found["img1.png"].ra is None and set(found) == {"img0.png", "img1.png"}
    store.add_scores("1", IDS, np.linspace(0.9, 0.1, len(IDS)))
    rows = get_candidates(store, "1", 3)["candidates"]
    assert rows[0]["catalogue"] == {"z": "0.33"} and rows[0]["links"] == sky_links(150.5, 2.5)
    assert "esasky" in rows[0]["links"] and "ra=150.500000&dec=2.500000" in rows[0]["links"]["legacysurvey"]
    assert rows[1]["links"] == {} and "catalogue" not in rows[2]


def test_the_cli_attaches_and_shows(tmp_path, capsys) -> None:
    home = tmp_path / "home"
    path = _csv(tmp_path, "objid,ra,dec,mag\nimg0.png,10.5,-5.25,17.2\n")
    assert cli(["catalogue", "attach", str(path), "--data-dir", str(home)]) == 1  # no 'id' column
    assert "no 'id' column" in capsys.readouterr().err
    assert cli(["catalogue", "attach", str(path), "--id-column", "objid", "--data-dir", str(home)]) == 0
    assert "1 catalogue row(s) attached" in capsys.readouterr().out
    assert cli(["catalogue", "show", "img0.png", "--data-dir", str(home)]) == 0
    shown = capsys.readouterr().out
    assert '"mag": "17.2"' in shown and '"dec": -5.25' in shown and "legacysurvey" in shown

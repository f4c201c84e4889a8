"""Labels: word parsing, the label table, and every error the CSV reader reports, on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalymatch.labels import Label, LabelError, LabelTable, parse_label, read_labels


def _write(tmp_path: Path, text: str, name: str = "labels.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_parse_label_words_only() -> None:
    assert parse_label("anomaly") is Label.ANOMALY
    assert parse_label("  Nominal ") is Label.NOMINAL
    assert parse_label("NORMAL") is Label.NOMINAL
    assert parse_label(Label.ANOMALY) is Label.ANOMALY
    for bad in ["1", "0", "true", "anomalous", ""]:
        with pytest.raises(LabelError, match="unknown label"):
            parse_label(bad)
    with pytest.raises(LabelError, match="row 7"):
        parse_label("x", row=7)
    assert issubclass(LabelError, ValueError)


def test_reference_tool_csv(tmp_path: Path) -> None:
    path = _write(tmp_path, "filename,label\na.png,normal\nb.png,anomaly\nc.png,Nominal\n")
    table = read_labels(path)
    assert table.ids == ("a.png", "b.png", "c.png")
    assert table.labels == (Label.NOMINAL, Label.ANOMALY, Label.NOMINAL)
    assert table.y.dtype == np.int8 and table.y.tolist() == [0, 1, 0]
    assert table.n_anomalies == 1 and len(table) == 3
    assert table.as_dict()["b.png"] is Label.ANOMALY


def test_bom_extras_and_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path, 'Image,Label,user,note\nx.jpg,anomaly,ana,"merger, maybe"\ny.jpg,nominal,bo,\n', bom=True)
    table = read_labels(path)
    assert table.ids == ("x.jpg", "y.jpg")
    assert table.extra == {"user": ("ana", "bo"), "note": ("merger, maybe", "")}
    out = table.to_csv(tmp_path / "out" / "copy.csv")
    assert out.read_bytes().startswith(b"filename,label,user,note\n")
    assert read_labels(out) == table


def test_label_map_with_class_names(tmp_path: Path) -> None:
    path = _write(tmp_path, "filename,class,class_name\n1.jpeg,4,merger\n2.jpeg,0,elliptical\n3.jpeg,1,Edge_On\n")
    table = read_labels(path, label_map={"merger": "anomaly", "elliptical": "nominal", "edge_on": "nominal"})
    assert table.labels == (Label.ANOMALY, Label.NOMINAL, Label.NOMINAL)
    assert table.extra == {"class": ("4", "0", "1")}
    by_index = read_labels(path, label_column="class", label_map={"4": "anomaly", "0": "normal", "1": "nominal"})
    assert by_index.y.tolist() == [1, 0, 0]
    with pytest.raises(LabelError, match="label_map\\['merger'\\]"):
        read_labels(path, label_map={"merger": "yes"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="not found: .*nope.csv"):
        read_labels(tmp_path / "nope.csv")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="is empty"):
        read_labels(_write(tmp_path, "\n  \n"))


def test_header_only_gives_empty_table(tmp_path: Path) -> None:
    table = read_labels(_write(tmp_path, "filename,label\n"))
    assert len(table) == 0 and table.y.shape == (0,)


def test_no_header_lists_columns(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"no filename column; columns found: \['a.png', 'anomaly'\]"):
        read_labels(_write(tmp_path, "a.png,anomaly\nb.png,nominal\n"))


def test_missing_label_column(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"no label column; columns found: \['filename', 'score'\]"):
        read_labels(_write(tmp_path, "filename,score\na.png,0.3\n"))
    with pytest.raises(LabelError, match="no column 'verdict'"):
        read_labels(_write(tmp_path, "filename,label\na.png,anomaly\n"), label_column="verdict")


def test_unknown_values_listed_with_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "filename,label\na,anomaly\nb,1\nc,nominal\nd,maybe\ne,1\nf,\n")
    with pytest.raises(LabelError) as err:
        read_labels(path)
    message = str(err.value)
    assert "'1' in rows [3, 6]" in message
    assert "'maybe' in rows [5]" in message
    assert "'' in rows [7]" in message
    assert "label_map" in message


def test_empty_filename_and_short_row(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="row 3 has an empty filename"):
        read_labels(_write(tmp_path, "filename,label\na,anomaly\n  ,nominal\n"))
    with pytest.raises(LabelError, match="row 2 has 1 fields, the header has 2"):
        read_labels(_write(tmp_path, "filename,label\na\n"))


def test_duplicates(tmp_path: Path) -> None:
    table = read_labels(_write(tmp_path, "filename,label\na,anomaly\nb,nominal\na,ANOMALY\n"))
    assert table.ids == ("a", "b")
    with pytest.raises(
        LabelError, match=r"1 conflicting duplicates: \[\"'a' is anomaly in row 2 but nominal in row 4\"\]"
    ):
        read_labels(_write(tmp_path, "filename,label\na,anomaly\nb,nominal\na,nominal\n"))


def test_known_ids_resolution(tmp_path: Path) -> None:
    known = ["sub/a.png", "sub/b.png", "other/b.png", "c.png"]
    path = _write(tmp_path, "filename,label\na.png,anomaly\nc.png,nominal\nother/b.png,nominal\n")
    table = read_labels(path, known_ids=known)
    assert table.ids == ("sub/a.png", "c.png", "other/b.png")
    # a basename and the full path of the same image must agree (they are the same id after resolving)
    with pytest.raises(LabelError, match="conflicting"):
        read_labels(_write(tmp_path, "filename,label\na.png,anomaly\nsub/a.png,nominal\n"), known_ids=known)


def test_ambiguous_basename(tmp_path: Path) -> None:
    path = _write(tmp_path, "filename,label\nb.png,anomaly\n")
    with pytest.raises(LabelError, match=r"match several source images.*\['other/b.png', 'sub/b.png'\]"):
        read_labels(path, known_ids={"sub/b.png", "other/b.png"})


def test_unknown_files_listed_with_count(tmp_path: Path) -> None:
    rows = "".join(f"ghost{i}.png,nominal\n" for i in range(12))
    path = _write(tmp_path, "filename,label\nreal.png,anomaly\n" + rows)
    with pytest.raises(LabelError) as err:
        read_labels(path, known_ids=["dir/real.png"])
    message = str(err.value)
    assert "12 filenames are not in the image source" in message
    assert "ghost9.png" in message and "ghost10.png" not in message


def test_sha256_order_invariant_and_label_sensitive() -> None:
    a = LabelTable.from_pairs([("x", "anomaly"), ("y", "nominal"), ("z", "nominal")])
    b = LabelTable.from_pairs([("z", "nominal"), ("x", "anomaly"), ("y", "normal")])
    assert a.sha256() == b.sha256() and len(a.sha256()) == 64
    flipped = LabelTable.from_pairs([("x", "anomaly"), ("y", "anomaly"), ("z", "nominal")])
    assert flipped.sha256() != a.sha256()
    assert a.to_csv_bytes(canonical=True) == b"filename,label\nx,anomaly\ny,nominal\nz,nominal\n"


def test_merge_later_wins() -> None:
    first = LabelTable(("a", "b"), (Label.ANOMALY, Label.NOMINAL), {"user": ("u1", "u1")})
    later = LabelTable(("b", "c"), (Label.ANOMALY, Label.NOMINAL), {"when": ("t2", "t3")})
    merged = first.merge(later)
    assert merged.ids == ("a", "b", "c")
    assert merged.labels == (Label.ANOMALY, Label.ANOMALY, Label.NOMINAL)
    assert merged.extra == {"user": ("u1", "u1", ""), "when": ("", "t2", "t3")}


def test_table_validation() -> None:
    with pytest.raises(LabelError, match="unique"):
        LabelTable(("a", "a"), (Label.ANOMALY, Label.ANOMALY))
    with pytest.raises(LabelError, match="2 ids but 1 labels"):
        LabelTable(("a", "b"), (Label.ANOMALY,))
    with pytest.raises(LabelError, match="conflicting labels"):
        LabelTable.from_pairs([("a", "anomaly"), ("a", "nominal")])
    assert LabelTable(("a",), ("normal",)).labels == (Label.NOMINAL,)  # type: ignore[arg-type]

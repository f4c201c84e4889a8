"""The client side without a service: the label sheet written by ``pull`` and read by ``push`` (empty labels
skipped, every bad value reported with its spreadsheet row before anything is sent), the accepted label
shapes, and the CLI's arguments."""

from __future__ import annotations

import pytest

from anomalymatch.cli import build_parser
from anomalymatch.labels import Label, LabelError, LabelTable
from labeling.client import CSV_COLUMNS, _entries, read_label_sheet, write_label_sheet


def test_sheet_round_trip_skips_empty_labels(tmp_path):
    path = write_label_sheet(
        tmp_path / "labels.csv",
        [
            ["sub/a.png", "", "0.91", 1, "images/0001_a.png", ""],
            ["b.fits", " Anomaly ", "0.80", 2, "images/0002_b.fits", "lensed arc"],
            ["c.png", "normal", "0.70", 3, "images/0003_c.png", ""],
        ],
    )
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert read_label_sheet(path) == [
        {"image_id": "b.fits", "label": "anomaly", "comment": "lensed arc"},
        {"image_id": "c.png", "label": "nominal"},
    ]


def test_bad_values_are_reported_with_rows_before_sending(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("filename,label\na.png,anomaly\nb.png,maybe\nc.png,1\n,nominal\n")
    with pytest.raises(LabelError) as err:
        read_label_sheet(path)
    message = str(err.value)
    assert (
        "'maybe' in row 3" in message and "'1' in row 4" in message and "row 5 has a label but no filename" in message
    )
    assert "nothing was sent" in message
    (tmp_path / "nolabel.csv").write_text("filename,score\na.png,0.5\n")
    with pytest.raises(LabelError, match="label column"):
        read_label_sheet(tmp_path / "nolabel.csv")


def test_other_columns_user_and_time_are_kept(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("image_id,Label,user,time\na.png,nominal,ann,2024-05-01T12:00:00Z\n")
    assert read_label_sheet(path) == [
        {"image_id": "a.png", "label": "nominal", "user": "ann", "time": "2024-05-01T12:00:00Z"}
    ]


def test_label_shapes_the_client_accepts():
    want = [{"image_id": "a", "label": "anomaly"}, {"image_id": "b", "label": "nominal"}]
    assert _entries({"a": "anomaly", "b": Label.NOMINAL}) == want
    assert _entries([("a", Label.ANOMALY), ("b", "nominal")]) == want
    assert _entries(LabelTable.from_pairs([("a", "anomaly"), ("b", "normal")])) == want
    assert _entries([{"image_id": "a", "label": "anomaly", "comment": "x"}])[0]["comment"] == "x"


def test_cli_verbs_parse():
    parser = build_parser()
    args = parser.parse_args(
        ["label", "--url", "http://h:1", "pull", "--n", "5", "--out", "d", "--strategy", "uncertain"]
    )
    assert (args.action, args.n, args.strategy, str(args.out), args.url) == ("pull", 5, "uncertain", "d", "http://h:1")
    args = parser.parse_args(["label", "push", "f.csv", "--user", "ann"])
    assert (args.action, str(args.csv), args.user) == ("push", "f.csv", "ann")
    args = parser.parse_args(["retrain", "--watch", "--min-labels", "5", "--max-wait-minutes", "2"])
    assert args.watch and args.min_labels == 5 and args.max_wait_minutes == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["retrain", "--watch", "--once"])

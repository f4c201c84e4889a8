"""`anomalymatch train` end to end on a real folder of PNGs with a labels CSV, and its errors."""

import csv
import sqlite3

import numpy as np
import pytest
from PIL import Image

from anomalymatch.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture()
def labelled_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(24):
        img = rng.integers(0, 100, (40, 40, 3), dtype=np.uint8)
        if i % 6 == 0:
            img[10:30, 10:30] = 255
        Image.fromarray(img).save(folder / ("sub" if i % 2 else "") / f"img{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "label", "comment"])
        w.writerows(
            [
                ["img00.png", "anomaly", "x"],
                ["img06.png", "anomaly", ""],
                ["img01.png", "normal", ""],
                ["img02.png", "nominal", ""],
                ["img03.png", "nominal", ""],
            ]
        )
    return folder, labels


def test_train_writes_candidates_and_logs_to_mlflow(labelled_folder, tmp_path, capsys):
    folder, labels = labelled_folder
    out = tmp_path / "cands.csv"
    code = main(
        [
            "train",
            "--images",
            str(folder),
            "--labels",
            str(labels),
            "--iterations",
            "2",
            "--size",
            "32",
            "--top",
            "5",
            "--data-dir",
            str(tmp_path / "home"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    labelled = {"img00.png", "img06.png", "sub/img01.png", "img02.png", "sub/img03.png"}
    assert not labelled & {r["id"] for r in rows}
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    printed = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri sqlite:///" in printed
    assert (tmp_path / "home" / "mlflow.db").is_file()
    with sqlite3.connect(tmp_path / "home" / "mlflow.db") as db:  # no --preset: the balanced recipe was logged
        logged = dict(db.execute("SELECT key, value FROM params WHERE key IN ('preset', 'fixmatch.freeze_blocks')"))
    assert logged == {"preset": "balanced", "fixmatch.freeze_blocks": "3"}
    assert (tmp_path / "home" / "campaigns" / "campaign" / "state.json").is_file()
    # a finished campaign resumes to "nothing left to do"
    assert (
        main(
            [
                "train",
                "--images",
                str(folder),
                "--labels",
                str(labels),
                "--iterations",
                "2",
                "--size",
                "32",
                "--data-dir",
                str(tmp_path / "home"),
                "--resume",
                "--quiet",
            ]
        )
        == 0
    )


def test_train_rejects_labels_for_unknown_files(labelled_folder, tmp_path, capsys):
    folder, _ = labelled_folder
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\nimg00.png,anomaly\nmissing.png,nominal\n")
    assert (
        main(["train", "--images", str(folder), "--labels", str(bad), "--data-dir", str(tmp_path / "h"), "--quiet"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.png" in err and "Traceback" not in err


def test_train_rejects_unknown_label_values(labelled_folder, tmp_path, capsys):
    folder, _ = labelled_folder
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\nimg00.png,anomaly\nimg01.png,maybe\n")
    assert (
        main(["train", "--images", str(folder), "--labels", str(bad), "--data-dir", str(tmp_path / "h"), "--quiet"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "maybe" in err and "Traceback" not in err

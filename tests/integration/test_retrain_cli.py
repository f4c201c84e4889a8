"""`anomalymatch retrain` as a user runs it: --setup (images and first labels into the label store),
--once --force (the first champion), --status; a bad labels CSV is one clear error and keeps what was stored."""

from __future__ import annotations

import json

import pytest
import yaml

from anomalymatch.cli import main as cli
from anomalymatch.labelstore import LabelStore
from tests.helpers.retrain import pick, write_campaign_images

pytestmark = pytest.mark.slow


def test_setup_first_champion_status_and_a_bad_labels_file(tmp_path, capsys):
    truth = write_campaign_images(tmp_path / "images", 24)
    labelled = pick(truth, 1, True, 3) + pick(truth, 0, True, 5)
    (tmp_path / "labels.csv").write_text(
        "filename,label\n" + "".join(f"{i},{'anomaly' if truth[i] else 'normal'}\n" for i in labelled)
    )  # the reference tool's words
    home = tmp_path / "home"
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fixmatch": {"batch_size": 4, "uratio": 1},
                "cycle": {"pool_sample": 0, "top_candidates": 5},
                "registry": {"parity_sample": 8, "parity_top_k": 4},
                "retrain": {"pretrained": False, "device": "cpu"},
                "workers": 1,
            }
        )
    )
    common = ["--data-dir", str(home), "--config", str(config), "--quiet"]

    assert (
        cli(
            [
                "retrain",
                "--setup",
                "--campaign",
                "survey",
                "--images",
                str(tmp_path / "images"),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--size",
                "32",
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "24 new image(s) registered" in out and "8 label(s) added" in out

    assert cli(["retrain", "--once", "--force", "--iterations", "1", *common]) == 0
    assert "version 1 promoted to champion" in capsys.readouterr().out
    assert cli(["retrain", "--status", *common]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "idle" and status["last_version"] == "1" and status["trained_seq"] == 8

    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\nimg01.png,anomaly\nimg02.png,maybe\n")
    assert (
        cli(
            [
                "retrain",
                "--setup",
                "--campaign",
                "survey",
                "--images",
                str(tmp_path / "images"),
                "--labels",
                str(bad),
                *common,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'maybe'" in err and "Traceback" not in err
    store = LabelStore(f"sqlite:///{home.resolve() / 'labels.db'}")
    assert store.last_seq() == 8 and len(store.current_labels().ids) == 8  # nothing lost, nothing half-added
    store.close()

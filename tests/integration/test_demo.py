"""The main job end to end on its real data (FIRST radio galaxies from the firstgalaxydata package), made
small: 32-pixel images and 2 FixMatch iterations per training, in a subprocess as `make demo` runs it."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_labelling_loop_and_registers_both_versions(tmp_path):
    import mlflow

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("ANOMALYMATCH_LABEL_TOKEN", None)
    home = tmp_path / "home"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomalymatch.cli",
            "demo",
            "--data-dir",
            str(home),
            "--quiet",
            "--iterations",
            "2",
            "--size",
            "32",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "2158 images (348 Bent)" in out
    assert "version 1 promoted to champion" in out
    assert re.search(r"bulk job \w+: 2158 images scored by version 1", out)
    assert re.search(r"round 1: the expert labelled 20 candidates, \d+ of them Bent", out)
    retrain = re.search(r"retrain: version 2 (promoted|not promoted) \((.+)\)", out)
    assert retrain, out[-3000:]
    assert re.search(r"version 1: precision@1% [\d.]+, AUROC [\d.]+", out)
    assert re.search(r"more like this: the 20 unlabelled images most like Bent source \S+ hold \d+ Bent", out), out
    assert "service stopped" in out

    client = mlflow.MlflowClient(f"sqlite:///{home.resolve() / 'mlflow.db'}")
    v2 = client.get_model_version("anomalymatch", "2")
    champion = str(client.get_registered_model("anomalymatch").aliases["champion"])
    assert champion == ("2" if retrain.group(1) == "promoted" else "1")
    assert v2.tags["parent_version"] == "1" and v2.tags["parity"] == "passed"
    # the expert's 20 labels (from the pulled sheet) are in version 2's labels artifact
    sheet = home / "demo" / "labelling" / "round-1" / "labels.csv"
    with sheet.open(newline="") as fh:
        expert = {row["filename"]: row["label"] for row in csv.DictReader(fh)}
    assert len(expert) == 20
    local = client.download_artifacts(v2.run_id, "labels/labelstore_labels.csv", str(tmp_path / "artifact"))
    with open(local, newline="") as fh:
        logged = {row["filename"]: row["label"] for row in csv.DictReader(fh)}
    assert {k: logged.get(k) for k in expert} == expert

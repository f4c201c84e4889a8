"""``anomalymatch inspect`` on real folders, HDF5 files and the shared GZ1 archive."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from anomalymatch import inspect as inspect_verb
from anomalymatch.cli import main
from tests.helpers.images import BROKEN_EXPECTED, valid_files

GZ1_ZIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gz1" / "images.zip"


def _inspect(*argv: str) -> int:
    """Run the verb through its own parser (independent of the other CLI verbs)."""
    parser = argparse.ArgumentParser()
    inspect_verb.add_arguments(parser)
    return inspect_verb.run(parser.parse_args(list(argv)))


def _inspect_json(capsys, *args: str) -> dict:
    assert _inspect(*args, "--json") == 0
    return json.loads(capsys.readouterr().out)["sources"][0]


@pytest.mark.skipif(not GZ1_ZIP.exists(), reason=f"shared GZ1 data not found at {GZ1_ZIP}")
def test_inspect_gz1_zip_counts_6664_images(capsys):
    result = _inspect_json(capsys, str(GZ1_ZIP), "--limit", "64", "--workers", "2")
    assert result["images"] == 6664 and result["kind"] == "zip"
    assert result["checked"] == 64 and result["decoded"] == 64 and result["skipped"] == []
    assert result["formats"] == {"jpeg": 64} and result["shapes"] == {"423x423x3 uint8": 64}
    assert main(["inspect", str(GZ1_ZIP), "--limit", "8"]) == 0  # through the real CLI entry point
    assert "images:      6,664 (checked the first 8)" in capsys.readouterr().out


def test_inspect_folder_with_broken_files_lists_them_and_exits_0(broken_dir, capsys, tmp_path):
    csv_path = tmp_path / "skipped.csv"
    assert _inspect(str(broken_dir), "--workers", "2", "--report-csv", str(csv_path)) == 0
    text = capsys.readouterr().out
    assert "SKIPPED" in text and "decoded:     2 of 6" in text
    for entry in BROKEN_EXPECTED:
        assert entry in text
    assert all(entry in csv_path.read_text() for entry in BROKEN_EXPECTED)
    result = _inspect_json(capsys, str(broken_dir))
    assert result["decoded"] == 2 and result["failed"] == 4 and result["unsupported"] == 4
    reasons = {s["id"]: s["reason"] for s in result["skipped"]}
    assert "unknown image format" in reasons["corrupt.png"]


def test_inspect_reports_native_shapes_for_every_kind(image_dir, hdf5_files, capsys):
    result = _inspect_json(capsys, str(image_dir), "--size", "16")
    assert result["decoded"] == len(valid_files()) and result["failed"] == 0
    assert result["formats"] == {"tiff": 7, "fits": 4, "png": 5, "jpeg": 2}
    assert result["shapes"]["40x48 uint16"] == 2 and result["shapes"]["40x48x3 float32"] == 1
    h5 = _inspect_json(capsys, str(hdf5_files["raw_f32_chw"].path), "--size", "16")
    assert h5["shapes"] == {"24x20x3 float32": 7} and h5["decoded"] == 7


def test_inspect_missing_path_exits_2_with_a_clear_message(tmp_path, capsys):
    assert _inspect(str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert "image source not found" in err and "nowhere" in err
    assert _inspect(str(tmp_path), "--size", "4") == 2
    assert "size" in capsys.readouterr().err


def test_decoding_modules_never_import_torch():
    modules = "anomalymatch, anomalymatch.inspect, anomalymatch.sources.hdf5, anomalymatch.sources.archive"
    code = f"import sys, {modules}; sys.exit(1 if 'torch' in sys.modules else 0)"
    repo = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=60).returncode == 0

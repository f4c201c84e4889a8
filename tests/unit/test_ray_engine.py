"""The Ray engine's pieces that need no cluster: partition planning covers every entry once, rows that
come back twice count once, the CLI and the job runner accept only known engines, and without Ray the
engine says how to install it. (The engine on a real multi-node cluster: tests/integration/test_ray_engine.py.)"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from serving.jobs import _report
from serving.ray_engine import Engine, Partition, _Pending, partition_rows_for, plan_partitions
from tests.helpers.serving import export_tiny_model, write_pngs


def test_partitions_cover_each_remaining_entry_once_in_order():
    cursors = [(0, 1000), (300, 301), (5, 5), (0, 0), (250, 999)]
    parts = plan_partitions(cursors, 256)
    for k, (start, count) in enumerate(cursors):
        mine = [p for p in parts if p.source == k]
        covered = [i for p in mine for i in range(p.start, p.end)]
        assert covered == list(range(start, count))
        assert all(0 < p.end - p.start <= 256 for p in mine)
    assert [p.id for p in parts] == list(range(len(parts)))
    with pytest.raises(ValueError, match="partition rows"):
        plan_partitions(cursors, 0)


def test_partition_rows_spread_work_within_bounds():
    assert partition_rows_for(100_000_000, 256, 65_536) == 65_536  # archive scale: one shard per partition
    assert partition_rows_for(3000, 4, 65_536) == 256  # small jobs: not below the minimum
    assert partition_rows_for(400_000, 16, 65_536) == 6250  # about four partitions per CPU
    assert partition_rows_for(10, 4, 4) == 4  # never above shard_rows


def test_a_row_that_comes_back_twice_counts_once():
    got = _Pending(Partition(0, 0, 10, 14))
    assert got.add(12, "c", "", 0.5) and got.add(10, "a", "", 0.25) and got.add(13, "d", "bad png", float("nan"))
    assert not got.add(12, "c", "", 0.9) and not got.complete  # a retried task's copy: the first one stands
    assert got.add(11, "b", "", 0.75) and got.complete
    ids, scores, errors = got.rows()
    assert ids == ["a", "b", "c"] and scores.tolist() == [0.25, 0.75, 0.5] and errors == [("d", "bad png")]
    got.release()
    assert got.complete and not got.add(11, "b", "", 0.1)


def test_engine_names_and_the_cli_choices_agree():
    from serving.cli_score import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    engine = next(a for a in parser._actions if a.dest == "engine")
    assert engine.choices == [e.value for e in Engine] and engine.default == "local"
    assert Engine.parse("ray") is Engine.RAY
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        Engine.parse("spark")


def test_the_job_runner_refuses_an_unknown_engine(tmp_path):
    from pathlib import Path

    from serving.jobs import BulkJobs
    from serving.live_model import LoadedModel
    from serving.uploads import RequestError

    jobs = BulkJobs(tmp_path / "bulk", [str(tmp_path)], 16, 1, 32, 5)
    with pytest.raises(RequestError) as bad:
        jobs.submit([str(tmp_path)], LoadedModel(None, "7", Path("m.onnx")), engine="spark")  # type: ignore[arg-type]
    assert bad.value.status == 400 and "'local'" in bad.value.message and "'ray'" in bad.value.message
    jobs.close()


def test_status_reports_seconds_left_at_the_current_rate(tmp_path):
    running = {"status": "running", "total": 1000, "scored": 390, "skipped": 10, "images_per_second": 200.0}
    assert _report("j", running, "7", tmp_path, [], None)["eta_s"] == 3.0
    assert _report("j", {**running, "status": "done"}, "7", tmp_path, [], None)["eta_s"] == 0.0
    assert _report("j", {**running, "images_per_second": 0.0}, "7", tmp_path, [], None)["eta_s"] is None


def test_without_ray_the_engine_says_how_to_install_it(tmp_path):
    """``ray`` made unimportable in a fresh interpreter: the CLI exits 2 with the install command."""
    model = export_tiny_model(tmp_path / "m.onnx", seed=3, version="7")
    write_pngs(tmp_path / "images", 3, size=36)
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from anomalymatch.cli import main\n"
        f"sys.exit(main(['score', '--engine', 'ray', '--source', {str(tmp_path / 'images')!r}, "
        f"'--out', {str(tmp_path / 'out')!r}, '--model', {str(model)!r}, '--quiet']))"
    )
    env = {**os.environ, "ANOMALYMATCH_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'anomalymatch[ray]'" in done.stderr and "--engine local" in done.stderr
    assert not (tmp_path / "out").exists()


def test_address_without_the_ray_engine_is_refused(tmp_path, capsys):
    from anomalymatch.cli import main

    rc = main(["score", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--address", "auto"])
    assert rc == 2 and "--engine ray" in capsys.readouterr().err

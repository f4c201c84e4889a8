"""Bulk scoring engine: every image exactly once across append-only Parquet shards, the same scores
as scoring in memory, an error report, top-N, and resumption after a crash or a cancel."""

from __future__ import annotations

import csv
import shutil

import pytest

from anomalymatch.loader import load_images
from anomalymatch.scoring import OnnxScorer
from serving.bulk import BulkJob, JobMismatch, read_manifest, read_scores
from tests.helpers.serving import export_tiny_model, write_pngs


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return OnnxScorer(export_tiny_model(tmp_path_factory.mktemp("bulk_model") / "m.onnx", seed=3, version="7"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bulk_images")
    write_pngs(root, 90, size=36)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "readme.txt").write_text("not an image")
    return root


def _expected(scorer, *sources):
    out = {}
    for src in sources:
        loaded = load_images(src, scorer.spec, workers=1)
        out.update({(str(src.resolve()), i): float(s) for i, s in zip(loaded.ids, scorer.score(loaded.images))})
    return out


def _rows(out_dir):
    table = read_scores(out_dir).to_pydict()
    keys = list(zip(table["source"], table["id"]))
    return keys, dict(zip(keys, table["score"])), set(table["model_version"])


class _Crash(RuntimeError):
    pass


def test_bulk_job_scores_every_image_once_with_reports(scorer, folder, hdf5_files, tmp_path):
    h5 = hdf5_files["raw_u8"].path
    job = BulkJob([folder, h5], tmp_path / "out", scorer, "7", batch_size=16, workers=2, shard_rows=32, top_n=5)
    progress = job.run()
    assert progress.status == "done" and progress.scored == 97 and progress.skipped == 2 and progress.total == 99
    keys, scores, versions = _rows(tmp_path / "out")
    expected = _expected(scorer, folder, h5)
    assert len(keys) == len(set(keys)) == len(expected) and versions == {"7"}
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-5)
    with (tmp_path / "out" / "errors.csv").open() as fh:
        errors = {row["id"]: row["reason"] for row in csv.DictReader(fh)}
    assert set(errors) == {"broken.png", "readme.txt"} and "unsupported file type" in errors["readme.txt"]
    with (tmp_path / "out" / "top.csv").open() as fh:
        top = list(csv.DictReader(fh))
    best = sorted(expected.items(), key=lambda kv: -kv[1])[:5]
    assert [r["id"] for r in top] == [k[1] for k, _ in best] and top[0]["model_version"] == "7"
    assert len(read_manifest(tmp_path / "out")["shards"]) >= 3


def test_reports_exist_before_the_job_says_done(scorer, folder, tmp_path):
    seen = []

    class Watched(BulkJob):  # what a status poller would see while the reports are being written
        def _write_reports(self, m):
            seen.append((self.progress.status, (self.out_dir / "top.csv").exists()))
            super()._write_reports(m)

    progress = Watched([folder], tmp_path / "out", scorer, "7", batch_size=16, workers=2, top_n=5).run()
    assert seen == [("running", False)] and progress.status == "done"
    assert (tmp_path / "out" / "top.csv").is_file() and (tmp_path / "out" / "errors.csv").is_file()


def test_crashed_job_resumes_without_rescoring_and_ends_exactly_once(scorer, folder, tmp_path):
    out = tmp_path / "out"
    commits = []

    def crash_on_third_commit(progress):
        commits.append(progress.scored)
        if len(commits) == 3:
            raise _Crash

    with pytest.raises(_Crash):
        BulkJob(
            [folder], out, scorer, "7", batch_size=8, workers=2, shard_rows=16, on_commit=crash_on_third_commit
        ).run()
    manifest = read_manifest(out)
    assert manifest["progress"]["status"] == "running" and len(manifest["shards"]) == 3
    committed = {shard["file"] for shard in manifest["shards"]}
    # A shard renamed into place just before a kill, but not yet in the manifest, must not count twice.
    shutil.copy(out / manifest["shards"][1]["file"], out / "shards" / "part-00003.parquet")
    scored_before = manifest["progress"]["scored"]
    seen = []
    progress = BulkJob(
        [folder], out, scorer, "7", batch_size=8, workers=2, shard_rows=16, on_commit=lambda p: seen.append(p.scored)
    ).run()
    assert progress.status == "done" and progress.scored == 90 and progress.skipped == 2
    assert seen[0] - scored_before <= 16 + 8  # the first new shard starts after the committed ones
    keys, scores, _ = _rows(out)
    assert len(keys) == len(set(keys)) == 90
    expected = _expected(scorer, folder)
    assert all(scores[k] == pytest.approx(v, abs=1e-5) for k, v in expected.items())
    assert committed <= {s["file"] for s in read_manifest(out)["shards"]}  # earlier shards kept, not rewritten


def test_cancel_then_resume_and_refuse_another_model_version(scorer, folder, tmp_path):
    out = tmp_path / "out"
    job = BulkJob([folder], out, scorer, "7", batch_size=8, workers=1, shard_rows=1000)
    original = scorer.score

    class CancelAfterTwo:
        spec = scorer.spec
        calls = 0

        def score(self, images, batch_size=256):
            CancelAfterTwo.calls += 1
            if CancelAfterTwo.calls == 2:
                job.cancel()
            return original(images, batch_size)

    job.scorer = CancelAfterTwo()
    assert job.run().status == "cancelled"
    assert read_manifest(out)["progress"]["scored"] == 16
    with pytest.raises(JobMismatch, match="version 7"):
        BulkJob([folder], out, scorer, "8").run()
    half = type("HalfScorer", (), {"spec": scorer.spec, "precision": "fp16", "score": staticmethod(scorer.score)})()
    with pytest.raises(JobMismatch, match="fp32 model file"):  # never fp16 rows after fp32 ones
        BulkJob([folder], out, half, "7").run()
    assert BulkJob([folder], out, scorer, "7", batch_size=8).run().status == "done"
    keys, _, _ = _rows(out)
    assert len(keys) == len(set(keys)) == 90


def _wait_finished(jobs, job_id, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while jobs.status(job_id)["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, jobs.status(job_id)
        time.sleep(0.05)
    return jobs.status(job_id)


def test_service_jobs_refuse_a_reused_id_and_survive_a_restart(scorer, folder, hdf5_files, tmp_path):
    """A finished job id resubmitted with other sources or another model version is a 409 at submit (the
    finished job stays "done"); a new BulkJobs over the same folder (a restarted service) reports the jobs
    from their manifests, and a job cut short by the restart shows as interrupted."""
    from pathlib import Path

    from serving.jobs import BulkJobs
    from serving.live_model import LoadedModel
    from serving.uploads import RequestError

    roots = [str(folder.parent), str(Path(hdf5_files["raw_u8"].path).parent)]
    model = LoadedModel(scorer, "7", Path("m.onnx"))
    jobs = BulkJobs(tmp_path / "bulk", roots, 16, 1, 32, 5)
    jobs.submit([str(folder)], model, job_id="survey")
    assert _wait_finished(jobs, "survey")["status"] == "done"
    with pytest.raises(RequestError) as other_sources:
        jobs.submit([str(hdf5_files["raw_u8"].path)], model, job_id="survey")
    assert other_sources.value.status == 409 and "other sources" in other_sources.value.message
    with pytest.raises(RequestError) as other_model:
        jobs.submit([str(folder)], LoadedModel(scorer, "8", Path("m.onnx")), job_id="survey")
    assert other_model.value.status == 409 and "model version 7" in other_model.value.message
    assert jobs.status("survey")["status"] == "done"  # the refused resubmissions changed nothing
    assert jobs.submit([str(folder)], model, job_id="survey")["status"] in ("queued", "running", "done")
    assert _wait_finished(jobs, "survey")["scored"] == 90  # the same sources and version: resumes, rescores none
    jobs.close()

    manifest = tmp_path / "bulk" / "survey" / "manifest.json"
    interrupted = tmp_path / "bulk" / "cut"
    interrupted.mkdir()
    text = manifest.read_text().replace('"status": "done"', '"status": "running"')
    (interrupted / "manifest.json").write_text(text)
    restarted = BulkJobs(tmp_path / "bulk", roots, 16, 1, 32, 5)
    status = restarted.status("survey")
    assert status["status"] == "done" and status["scored"] == 90 and status["model_version"] == "7"
    assert status["top_file"].endswith("top.csv") and status["sources"] == [str(folder.resolve())]
    assert restarted.status("cut")["status"] == "interrupted"
    assert [j["job_id"] for j in restarted.list_jobs()] == ["cut", "survey"]
    with pytest.raises(RequestError) as missing:
        restarted.status("nope")
    assert missing.value.status == 404
    restarted.close()


def test_bulk_job_with_roots_never_reads_a_symlink_that_leaves_them(scorer, tmp_path):
    """Issue 12: a bulk job over a folder under the data roots scored files that symlinks inside it
    pointed to outside; now they are listed in errors.csv with the reason and never read."""
    root = tmp_path / "root"
    write_pngs(root / "images", 6, size=36)
    outside = tmp_path / "outside"
    write_pngs(outside, 3, size=36)
    (root / "images" / "escape.png").symlink_to(outside / "img_0000.png")
    (root / "images" / "more").symlink_to(outside, target_is_directory=True)
    (root / "images" / "inside.png").symlink_to(root / "images" / "img_0000.png")
    job = BulkJob([root / "images"], tmp_path / "out", scorer, "7", batch_size=4, workers=1, roots=[root])
    progress = job.run()
    ids = set(read_scores(tmp_path / "out").to_pydict()["id"])
    assert progress.scored == 7 and "inside.png" in ids  # a link that stays inside is fine
    assert not any(i.startswith("more/") for i in ids) and "escape.png" not in ids
    with (tmp_path / "out" / "errors.csv").open() as fh:
        errors = {row["id"]: row["reason"] for row in csv.DictReader(fh)}
    assert "outside the allowed roots" in errors["escape.png"] and "outside the allowed roots" in errors["more/"]
    with pytest.raises(Exception, match="outside the allowed roots"):
        BulkJob([outside], tmp_path / "out2", scorer, "7", roots=[root]).run()

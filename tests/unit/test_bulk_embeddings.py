"""Bulk jobs on real GZ1 cutouts: ``--embeddings`` stores each image's features (float16) beside its score,
read back as ids + a matrix and searched with ``anomalymatch similar --bulk``; a resume keeps the choice;
top.csv carries the catalogue's columns and sky links, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anomalymatch.catalogue import read_catalogue, sky_links
from anomalymatch.cli import main as cli
from anomalymatch.config import LabelStoreConfig
from anomalymatch.embeddings import EmbeddingSet
from anomalymatch.loader import load_images
from anomalymatch.scoring import OnnxScorer
from anomalymatch.vector_index import SimilarConfig, faiss_available
from serving.bulk import SCORE_COLUMNS, BulkJob, JobMismatch, NoEmbeddingOutput, read_scores
from serving.bulk_embeddings import read_embeddings
from serving.bulk_top import catalogue_from_file, catalogue_from_store
from tests.helpers.serving import export_tiny_model

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gz1"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("bulk_emb_model") / "m.onnx", seed=3, version="7")


@pytest.fixture(scope="module")
def scorer(model_path) -> OnnxScorer:
    return OnnxScorer(model_path)


@pytest.fixture(scope="module")
def gz1(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """36 real GZ1 cutouts (12 of them in a sub-folder) and their Galaxy Zoo classes."""
    if not (DATA / "images.zip").exists():
        pytest.skip("shared GZ1 data not found")
    with (DATA / "labels.csv").open(newline="") as fh:
        classes = {r["filename"]: r["class_name"] for r in list(csv.DictReader(fh))[:36]}
    root = tmp_path_factory.mktemp("gz1_bulk")
    (root / "deep").mkdir()
    with zipfile.ZipFile(DATA / "images.zip") as zf:
        for k, name in enumerate(classes):
            (root / ("deep" if k < 12 else "") / name).write_bytes(zf.read(name))
    return root, classes


def test_embeddings_are_stored_with_the_scores_and_searchable(scorer, gz1, tmp_path, capsys) -> None:
    folder, classes = gz1
    out = tmp_path / "out"
    progress = BulkJob([folder], out, scorer, "7", batch_size=8, workers=1, shard_rows=16, embeddings=True).run()
    assert progress.status == "done" and progress.scored == 36
    table = read_scores(out)
    assert table.column_names == SCORE_COLUMNS  # read_scores is unchanged by embeddings
    found = read_embeddings(out)
    assert found.ids.tolist() == table["id"].to_pylist() and found.model_version == "7"
    assert found.vectors.dtype == np.float16 and found.vectors.shape == (36, 1280)
    loaded = load_images(folder, scorer.spec, workers=1)
    scores, features = scorer.score_and_embed(loaded.images)
    row = {i: k for k, i in enumerate(loaded.ids)}
    order = [row[i] for i in found.ids]
    np.testing.assert_allclose(found.vectors.astype(np.float32), features[order], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(table["score"].to_numpy(), scores[order], atol=1e-5)  # one pass, same scores

    searched = EmbeddingSet.load(out)  # a bulk job folder loads like a stored embeddings file
    query = "deep/" + next(iter(classes))
    assert searched.nearest(searched.vector_of(query), k=3)[0][0] == query
    assert cli(["similar", query, "--bulk", str(out), "--k", "3", "--data-dir", str(tmp_path / "home")]) == 0
    printed = capsys.readouterr().out.splitlines()
    rank, similarity, _, score, image_id = printed[2].split("\t")
    assert rank == "1" and image_id != query and float(similarity) < 1.0  # the image itself is not listed
    assert image_id == searched.nearest(searched.vector_of(query), k=2)[1][0]
    assert float(score) == pytest.approx(scores[row[image_id]], abs=1e-4)  # the job's score of that image


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_a_bulk_jobs_index_is_kept_in_its_folder(scorer, gz1, tmp_path) -> None:
    folder, _ = gz1
    out = tmp_path / "out"
    BulkJob([folder], out, scorer, "7", batch_size=8, workers=1, embeddings=True).run()
    forced = SimilarConfig(search="approximate", pq_m=64, nbits=4, refine=10)
    searched = EmbeddingSet.load(out, forced)
    query = searched.ids[5]
    assert searched.approximate and searched.nearest(searched.vector_of(query), k=1)[0][0] == query
    assert len(list(out.glob("embeddings.*.faiss"))) == 1


def test_a_resume_keeps_the_embeddings_choice_and_a_model_without_them_is_refused(scorer, gz1, tmp_path) -> None:
    folder, _ = gz1
    out = tmp_path / "out"
    BulkJob([folder], out, scorer, "7", batch_size=8, workers=1).run()
    with pytest.raises(JobMismatch, match="started without embeddings; resume it without --embeddings"):
        BulkJob([folder], out, scorer, "7", embeddings=True).run()
    with pytest.raises(ValueError, match="scored without embeddings: score the sources again"):
        read_embeddings(out)
    with_them = tmp_path / "with"
    BulkJob([folder], with_them, scorer, "7", batch_size=8, workers=1, embeddings=True).run()
    with pytest.raises(JobMismatch, match="started with embeddings"):
        BulkJob([folder], with_them, scorer, "7").run()

    class OldModel:  # exported before embeddings: no embedding output
        spec = scorer.spec
        embedding_output = None

        def score(self, images, batch_size=256):
            return scorer.score(images, batch_size)

    job = BulkJob([folder], tmp_path / "old", OldModel(), "5", embeddings=True)
    with pytest.raises(NoEmbeddingOutput, match="version 5 has none"):
        job.run()
    assert job.progress.status == "failed" and not (tmp_path / "old").exists()


def _catalogue(path: Path, classes: dict[str, str]) -> Path:
    """Catalogue rows for all but the last 6 images (by file name), one with a formula in a column."""
    names = list(classes)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "ra", "dec", "class_name", "note"])
        for k, name in enumerate(names[:-6]):
            note = '=HYPERLINK("http://evil.example","x")' if k == 0 else f"-note {k}"
            writer.writerow([name, f"{10 + k * 0.5}", f"{-12.5 + k}", classes[name], note])
    return path


def test_top_csv_carries_the_catalogue_columns_and_sky_links_safely(scorer, gz1, tmp_path) -> None:
    folder, classes = gz1
    catalogue_csv = _catalogue(tmp_path / "cat.csv", classes)
    rows = {r.image_id: r for r in read_catalogue(catalogue_csv)}
    out = tmp_path / "out"
    BulkJob(
        [folder], out, scorer, "7", batch_size=8, workers=1, top_n=36, catalogue=catalogue_from_file(catalogue_csv)
    ).run()
    with (out / "top.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        header, top = reader.fieldnames, list(reader)
    assert header[:5] == ["rank", "id", "score", "model_version", "source"]
    assert header[5:] == ["ra", "dec", "esasky", "legacysurvey", "class_name", "note"]
    assert len(top) == 36
    by_name = {Path(r["id"]).name: r for r in top}
    assert any(r["id"].startswith("deep/") for r in top)  # matched by file name inside a folder tree
    for name, entry in rows.items():
        r = by_name[name]
        assert float(r["ra"]) == pytest.approx(entry.ra) and float(r["dec"]) == pytest.approx(entry.dec)
        assert r["esasky"] == sky_links(entry.ra, entry.dec)["esasky"] and r["class_name"] == classes[name]
    first = by_name[next(iter(rows))]
    assert first["note"].startswith("'=HYPERLINK") and first["dec"] == "-12.500000"  # formula guarded, number not
    assert all(by_name[n]["note"].startswith("'-note") for n in list(rows)[1:])
    assert all(by_name[n]["ra"] == "" and by_name[n]["esasky"] == "" for n in list(classes)[-6:])


def test_the_attached_catalogue_is_found_in_the_label_store(tmp_path, gz1) -> None:
    from anomalymatch.labelstore import LabelStore

    _, classes = gz1
    home = tmp_path / "home"
    assert catalogue_from_store(LabelStoreConfig(), home) is None and not home.exists()  # nothing created
    home.mkdir()
    with LabelStore(f"sqlite:///{home / 'labels.db'}") as store:
        store.attach_catalogue(read_catalogue(_catalogue(tmp_path / "cat.csv", classes)))
    lookup = catalogue_from_store(LabelStoreConfig(), home)
    first = next(iter(classes))
    assert lookup is not None and lookup([first, "nope"])[first].columns["class_name"] == classes[first]


def test_score_cli_writes_catalogue_columns_and_refuses_a_bad_catalogue_before_scoring(model_path, gz1, tmp_path):
    folder, classes = gz1
    base = ["score", "--source", str(folder), "--model", str(model_path), "--data-dir", str(tmp_path / "home")]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,ra\nx,999\n")
    assert cli([*base, "--out", str(tmp_path / "refused"), "--catalogue", str(bad), "--quiet"]) == 2
    assert not (tmp_path / "refused").exists()
    good = _catalogue(tmp_path / "cat.csv", classes)
    out = tmp_path / "out"
    assert cli([*base, "--out", str(out), "--catalogue", str(good), "--embeddings", "--quiet"]) == 0
    with (out / "top.csv").open(newline="") as fh:
        assert "legacysurvey" in next(csv.reader(fh))
    assert read_embeddings(out).vectors.shape == (36, 1280)
    assert cli([*base, "--out", str(out), "--quiet"]) == 2  # resuming without --embeddings is refused


def test_service_bulk_jobs_pass_embeddings_and_the_catalogue_through(scorer, model_path, gz1, tmp_path) -> None:
    import time

    from serving.jobs import BulkJobs
    from serving.live_model import LoadedModel
    from serving.uploads import RequestError

    folder, classes = gz1
    catalogue = catalogue_from_file(_catalogue(tmp_path / "cat.csv", classes))
    jobs = BulkJobs(tmp_path / "bulk", [str(folder)], 8, 1, 64, 5, catalogue=catalogue)
    model = LoadedModel(scorer, "7", model_path)
    jobs.submit([str(folder)], model, job_id="survey", embeddings=True)
    deadline = time.monotonic() + 60
    while jobs.status("survey")["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = jobs.status("survey")
    assert status["status"] == "done" and read_embeddings(status["out_dir"]).vectors.shape == (36, 1280)
    with open(status["top_file"], newline="") as fh:
        assert "class_name" in next(csv.reader(fh))
    with pytest.raises(RequestError) as other:
        jobs.submit([str(folder)], model, job_id="survey")
    assert other.value.status == 409 and "started with embeddings" in other.value.message
    jobs.close()

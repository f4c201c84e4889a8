"""Continuous retraining on real components: a folder of real PNGs as the campaign, the SQLite label store,
an MLflow registry on SQLite, a tiny model (32 px, 2 iterations). A retrain registers, gates and promotes;
the next one starts from the champion's weights; labels posted during a run queue the next; a failure is
reported and leaves the champion; only one retrain runs at a time; the status rules."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from anomalymatch.campaign_images import campaign_images, setup_campaign
from anomalymatch.config import RetrainConfig
from anomalymatch.labelstore import LabelEntry, LabelStore
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.retrain_state import RetrainState, evaluate, read_state, retrain_due, state_path, write_state
from tests.helpers.retrain import pick, tiny_config, write_campaign_images


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    truth = write_campaign_images(root / "images")
    config = tiny_config(root)
    store = LabelStore.from_config(config.labelstore, config.data_path)
    setup_campaign(store, "unit", [root / "images"], config.preprocess)
    first = pick(truth, 1, True, 1) + pick(truth, 1, False, 2) + pick(truth, 0, True, 2) + pick(truth, 0, False, 3)
    store.add_labels([LabelEntry(i, "anomaly" if truth[i] else "nominal", "ann") for i in first], key="first")
    return root, truth, config, store, first


def _aliases(config):
    from registry.store import get_aliases, mlflow_client

    return get_aliases(mlflow_client(config.tracking.tracking_uri), "anomalymatch")


def test_retrain_registers_promotes_then_continues_from_the_champion(world):
    import mlflow

    from training.retrain import RetrainWatcher

    root, truth, config, store, first = world
    watcher = RetrainWatcher(config, store)
    assert watcher.status()["status"] == "queued"  # 8 labels >= min_labels 4, never trained

    # Labels posted while the run is running count toward the next one.
    during = pick(truth, 0, False, 4, skip=first)
    posted = threading.Event()

    def post_during_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and read_state(watcher.state_file).status != "running":
            time.sleep(0.02)
        store.add_labels([LabelEntry(i, "nominal", "bob") for i in during], key="during")
        posted.set()

    thread = threading.Thread(target=post_during_run)
    thread.start()
    outcome = watcher.run_once()
    thread.join()
    assert posted.is_set()
    assert outcome.ran and not outcome.failed and outcome.version == "1" and outcome.promoted, outcome
    assert outcome.gate == "no_champion" and outcome.label_seq == 8
    assert _aliases(config)["champion"] == "1"
    status = watcher.status()
    assert status["last_version"] == "1" and status["trained_seq"] == 8 and status["new_labels"] == 4
    assert status["status"] == "queued"  # the labels posted during the run queue the next retrain

    # The new version's pool scores are in the store: candidates exclude every labelled image.
    labelled = store.labelled_ids()
    candidates = store.select_candidates("1", 50, "top")
    assert candidates and not {c.image_id for c in candidates} & labelled
    assert len(candidates) == len(truth) - len(labelled)

    # The next retrain, through the watch loop: starts from version 1's weights, trains on all labels.
    n = watcher.watch(poll_s=0.05, max_runs=1)
    assert n == 1
    state = read_state(watcher.state_file)
    assert state.status == "idle" and state.last_version == "2" and state.trained_seq == 12 and not state.last_error
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    mv = client.get_model_version("anomalymatch", "2")
    assert mv.tags["parent_version"] == "1" and mv.tags["gate_vs"] == "1"
    assert mv.tags["gate"] == "passed", mv.tags.get("gate_reason")
    assert state.last_promoted and _aliases(config)["champion"] == "2" and _aliases(config)["previous"] == "1"
    run = client.get_run(mv.run_id)
    assert run.data.tags["anomalymatch.label_seq"] == "12"
    local = client.download_artifacts(mv.run_id, "labels/labels.csv", str(root / "art"))
    with open(local, newline="") as fh:
        logged = {row["filename"]: row["label"] for row in csv.DictReader(fh)}
    assert set(logged) == set(first) | set(during)
    assert all(logged[i] == "nominal" for i in during)
    local = client.download_artifacts(mv.run_id, "labels/labelstore_labels.csv", str(root / "art2"))
    with open(local, newline="") as fh:
        users = {row["filename"]: row["user"] for row in csv.DictReader(fh)}
    assert {users[i] for i in during} == {"bob"}
    assert watcher.status()["status"] == "idle"

    # Each retrain stored the vectors of every image it held, for "more like this" and the similar strategy.
    from anomalymatch.embeddings import EmbeddingSet, embeddings_path

    held = EmbeddingSet.load(embeddings_path(config.data_path, "2"))
    assert held.model_version == "2" and set(held.ids) == set(truth) and held.dim == 1280
    anomaly = first[0]
    hits = held.nearest(held.vector_of(anomaly), k=len(truth), exclude={anomaly})
    assert len(hits) == len(truth) - 1 and hits[0][1] >= hits[-1][1]

    from anomalymatch.cli import main as cli

    capsys_out = _run_cli(
        cli,
        [
            "similar",
            anomaly,
            "--k",
            "5",
            "--unlabelled",
            "--data-dir",
            config.data_dir,
            "--config",
            str(_config_file(root, config)),
        ],
    )
    lines = capsys_out.splitlines()
    assert "model version 2" in lines[0] and len(lines) == 2 + 5
    assert not {line.split("\t")[-1] for line in lines[2:]} & store.labelled_ids()  # only unlabelled images


def _config_file(root, config):
    import json

    path = root / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def _run_cli(cli, argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(argv) == 0
    return buf.getvalue()


def test_failure_is_reported_and_keeps_the_champion_then_new_labels_retry(world):
    from training.retrain import RetrainWatcher

    root, truth, config, store, first = world
    watcher = RetrainWatcher(config, store)
    champion = _aliases(config).get("champion")
    assert champion is not None  # the test above ran first (same module)
    labelled = store.labelled_ids()
    more = [i for i in sorted(truth) if i not in labelled][:4]
    store.add_labels([LabelEntry(i, "anomaly" if truth[i] else "nominal") for i in more], key="more")
    shutil.move(root / "images", root / "moved")  # the campaign's images are gone: the retrain fails
    try:
        outcome = watcher.run_once()
    finally:
        shutil.move(root / "moved", root / "images")
    assert outcome.ran and outcome.failed and "not found" in outcome.error
    status = watcher.status()
    assert status["status"] == "failed" and "not found" in status["last_error"]
    assert _aliases(config)["champion"] == champion
    assert not watcher.run_once().ran  # no new label since the failed attempt: no retry loop

    store.add_labels([LabelEntry(more[0], "anomaly" if truth[more[0]] else "nominal", "carl")], key="retry")
    assert watcher.status()["status"] == "queued"
    outcome = watcher.run_once()
    assert outcome.ran and not outcome.failed, outcome
    assert watcher.status()["status"] == "idle" and watcher.status()["last_error"] == ""


def test_only_one_retrain_at_a_time(world):
    from training.retrain import RetrainWatcher, retrain_lock

    root, truth, config, store, first = world
    watcher = RetrainWatcher(config, store)
    with retrain_lock(watcher.lock_file) as held:
        assert held
        with retrain_lock(watcher.lock_file) as second:
            assert not second
        outcome = watcher.run_once(force=True)
    assert not outcome.ran and "another retrain is running" in outcome.reason


def test_due_rules_and_status_transitions(tmp_path):
    assert retrain_due(20, 0, 20, 60) and not retrain_due(19, 0, 20, 60)
    assert retrain_due(1, 3601, 20, 60) and not retrain_due(1, 3599, 20, 60)
    assert not retrain_due(0, 1e9, 20, 60) and not retrain_due(5, 1e9, 20, 0)

    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    store.register_images(["a.png", "b.png"])
    cfg = RetrainConfig(min_labels=2, max_wait_minutes=10, min_anomalies=1)
    path = state_path(tmp_path)
    assert evaluate(read_state(path), store, cfg)["status"] == "idle"
    store.add_labels([LabelEntry("a.png", "anomaly")])
    later = datetime.now(UTC) + timedelta(minutes=11)
    assert evaluate(read_state(path), store, cfg)["status"] == "idle"
    assert evaluate(read_state(path), store, cfg, now=later)["status"] == "queued"  # waited long enough
    waiting = evaluate(read_state(path), store, dataclasses.replace(cfg, min_anomalies=2), now=later)
    assert waiting["status"] == "idle" and waiting["waiting_for_anomalies"]  # cold start: too few anomalies yet
    trained = dataclasses.replace(read_state(path), trained_champion=True)  # a trained champion retrains anyway
    report = evaluate(trained, store, dataclasses.replace(cfg, min_anomalies=2), now=later)
    assert report["status"] == "queued" and not report["waiting_for_anomalies"]
    store.add_labels([LabelEntry("b.png", "nominal")])
    assert evaluate(read_state(path), store, cfg)["status"] == "queued"

    running = RetrainState(status="running", pid=os.getpid(), host=os.uname().nodename, attempted_seq=2)
    write_state(path, running)
    report = evaluate(read_state(path), store, cfg)
    assert report["status"] == "running" and not report["queued_next"]  # the run includes both labels
    dead = RetrainState(status="running", pid=2**22 + 12345, host=os.uname().nodename, attempted_seq=2)
    write_state(path, dead)
    report = evaluate(read_state(path), store, cfg)
    assert report["status"] == "failed" and "ended during the run" in report["last_error"]
    write_state(path, RetrainState(status="failed", last_error="boom", attempted_seq=2, trained_seq=0))
    assert evaluate(read_state(path), store, cfg)["status"] == "failed"
    write_state(path, running)
    store.add_labels([LabelEntry("a.png", "nominal")])
    assert not evaluate(read_state(path), store, cfg)["queued_next"]  # 1 label arrived during the run, 2 needed
    store.add_labels([LabelEntry("b.png", "anomaly")])
    assert evaluate(read_state(path), store, cfg)["queued_next"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # atomic writes leave no temp files


def test_campaign_setup_registers_images_and_refuses_other_sources(tmp_path):
    write_campaign_images(tmp_path / "a", 3)
    write_campaign_images(tmp_path / "b", 2)
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    campaign, added = setup_campaign(store, "c1", [tmp_path / "a"], PreprocessSpec(size=48))
    assert added == 3 and store.n_images() == 3
    assert campaign_images(store) == campaign and campaign.preprocess == PreprocessSpec(size=48)
    assert setup_campaign(store, "c1", [tmp_path / "a"])[1] == 0  # idempotent
    with pytest.raises(ValueError, match="already reads"):
        setup_campaign(store, "c1", [tmp_path / "b"])
    setup_campaign(store, "c2", [tmp_path / "b"])
    with pytest.raises(LookupError, match="set retrain.campaign"):
        campaign_images(store)
    assert campaign_images(store, "c2").sources == (str((tmp_path / "b").resolve()),)

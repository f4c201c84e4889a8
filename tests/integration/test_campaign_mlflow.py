"""A real two-cycle campaign on a real (SQLite) MLflow store: every cycle's labels, pool, candidates,
plots and model are logged, and the oracle's picks show up in the next cycle's labels."""

import hashlib

import mlflow
import numpy as np
import pytest
import torch

from anomalymatch.config import AppConfig, CycleConfig, FixMatchConfig, TrackingConfig
from anomalymatch.preprocessing import PreprocessSpec
from training.active_learning import load_state, run_cycles
from training.cycle import LabelledPool
from training.model import create_model
from training.tracking import RunTracker
from training.trainer import FixMatchTrainer

pytestmark = pytest.mark.slow


def test_campaign_logs_every_cycle_with_its_labels(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    images = rng.integers(0, 120, (n, 32, 32, 3), dtype=np.uint8)
    truth = np.zeros(n, dtype=np.int64)
    truth[::6] = 1
    images[truth == 1, 10:22, 10:22] = 250
    ids = np.asarray([f"img{i:03d}.png" for i in range(n)], dtype=object)
    labelled = np.array([0, 6, 1, 2, 3])
    state = LabelledPool(labelled, truth[labelled], np.setdiff1d(np.arange(n), labelled))
    config = AppConfig(
        data_dir=str(tmp_path),
        preprocess=PreprocessSpec(size=32),
        fixmatch=FixMatchConfig(batch_size=4, uratio=1),
        cycle=CycleConfig(iterations=2, cycles=2, picks=2, top_candidates=5),
        tracking=TrackingConfig(experiment="test"),
    )
    torch.manual_seed(0)
    trainer = FixMatchTrainer(create_model(config.preprocess, pretrained=False), config.fixmatch, device="cpu")
    tracker = RunTracker(config.tracking, tmp_path)
    outcome = run_cycles(trainer, images, ids, state, config, tmp_path / "camp", truth=truth, tracker=tracker, name="t")

    assert [r.cycle for r in outcome.results] == [1, 2]
    assert outcome.results[1].n_labelled == 5 + 4  # 2 true anomalies + 2 false positives moved
    assert not set(outcome.state.labelled_idx) & set(outcome.state.pool_idx)
    saved = load_state(tmp_path / "camp" / "state.json", ids)
    assert saved.cycle == 2 and sorted(saved.labelled_idx) == sorted(outcome.state.labelled_idx)

    client = mlflow.MlflowClient(tracker.tracking_uri)
    runs = client.search_runs([tracker.experiment_id])
    cycles = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.run_id),
        key=lambda r: int(r.data.tags["anomalymatch.cycle"]),
    )
    assert len(cycles) == 2
    label_counts = []
    for run in cycles:
        rid = run.info.run_id
        local = client.download_artifacts(rid, "labels/labels.csv", str(tmp_path / rid))
        data = open(local, "rb").read()
        rows = data.decode().strip().splitlines()[1:]
        label_counts.append(len(rows))
        assert run.data.tags["n_labels"] == str(len(rows))
        assert len(run.data.tags["labels_sha256"]) == 64
        paths = {a.path for top in ("plots", "model", "candidates", "pool") for a in client.list_artifacts(rid, top)}
        assert {
            "plots/roc.png",
            "plots/pr.png",
            "plots/efficiency.png",
            "model/model.safetensors",
            "model/preprocess.json",
            "candidates/candidates.csv",
            "pool/pool_ids.txt",
        } <= paths
        saliency = sorted(a.path for a in client.list_artifacts(rid, "saliency"))  # why the top candidates
        assert saliency and saliency[0].startswith("saliency/rank01_") and len(saliency) <= 8
        assert {"auroc", "auprc", "precision_at_1pct", "seconds_per_iteration"} <= set(run.data.metrics)
        assert len(client.get_metric_history(rid, "mask_rate")) == 2
        pool_file = client.download_artifacts(rid, "pool/pool_ids.txt", str(tmp_path / rid))
        assert run.data.tags["pool_sha256"] == hashlib.sha256(open(pool_file, "rb").read()).hexdigest()
    assert label_counts == [5, 9]
    assert cycles[0].data.tags["labels_sha256"] != cycles[1].data.tags["labels_sha256"]
    parent = client.get_run(outcome.run_id)
    assert parent.data.params["fixmatch.threshold"] == "0.95"
    assert "config.json" in {a.path for a in client.list_artifacts(outcome.run_id)}

"""A real two-cycle campaign with ``register=True``: each cycle becomes a registry version with its
lineage, the id-hashed held-out labels are never trained on, and the slice stays fixed across cycles."""

import csv
import hashlib

import mlflow
import numpy as np
import pytest
import torch

from anomalymatch.config import AppConfig, CycleConfig, FixMatchConfig, RegistryConfig, TrackingConfig
from anomalymatch.preprocessing import PreprocessSpec
from registry import list_versions, select_holdout
from training.active_learning import run_cycles
from training.cycle import LabelledPool
from training.model import create_model
from training.tracking import RunTracker
from training.trainer import FixMatchTrainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _labels(client, run_id, path, dst):
    with open(client.download_artifacts(run_id, path, str(dst)), newline="") as fh:
        return {row["filename"]: row["label"] for row in csv.DictReader(fh)}


def test_campaign_registers_every_cycle_with_lineage_and_a_fixed_holdout(tmp_path):
    rng = np.random.default_rng(0)
    n = 48
    images = rng.integers(0, 120, (n, 32, 32, 3), dtype=np.uint8)
    truth = np.zeros(n, dtype=np.int64)
    truth[::6] = 1
    images[truth == 1, 10:22, 10:22] = 250
    ids = np.asarray([f"img{i:03d}.png" for i in range(n)], dtype=object)
    labelled = np.array([0, 6, 12, 18, 1, 2, 3, 4, 5, 7])
    state = LabelledPool(labelled, truth[labelled], np.setdiff1d(np.arange(n), labelled))
    config = AppConfig(
        data_dir=str(tmp_path),
        preprocess=PreprocessSpec(size=32),
        fixmatch=FixMatchConfig(batch_size=4, uratio=1),
        cycle=CycleConfig(iterations=1, cycles=2, picks=2, top_candidates=5),
        tracking=TrackingConfig(experiment="reg", registered_model="am-campaign"),
        registry=RegistryConfig(holdout_fraction=0.4, parity_top_k=20),
    )
    torch.manual_seed(0)
    trainer = FixMatchTrainer(create_model(config.preprocess, pretrained=False), config.fixmatch, device="cpu")
    tracker = RunTracker(config.tracking, tmp_path)
    outcome = run_cycles(
        trainer, images, ids, state, config, tmp_path / "camp", truth=truth, tracker=tracker, name="camp", register=True
    )

    regs = outcome.registrations
    assert [r.version for r in regs] == ["1", "2"] and all(r.parity.passed for r in regs)
    assert regs[0].promotion is not None  # first version: no champion to beat
    client = mlflow.MlflowClient(tracker.tracking_uri, registry_uri=tracker.tracking_uri)
    holdouts = []
    for reg, result in zip(regs, outcome.results):
        mv = client.get_model_version("am-campaign", reg.version)
        tags = mv.tags
        train = _labels(client, mv.run_id, "registry/train_labels.csv", tmp_path / f"t{reg.version}")
        held = _labels(client, mv.run_id, "registry/holdout_labels.csv", tmp_path / f"h{reg.version}")
        assert held and not set(train) & set(held)  # the gate's images were never trained on
        assert result.n_labelled == len(train) == int(tags["n_labels"])
        assert int(tags["n_anomalies"]) == sum(v == "anomaly" for v in train.values())
        canonical = "filename,label\n" + "".join(f"{i},{train[i]}\n" for i in sorted(train))
        assert tags["labels_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
        run_tags = client.get_run(mv.run_id).data.tags
        assert tags["pool_sha256"] == run_tags["pool_sha256"] and tags["cycle"] == str(result.cycle)
        assert tags["config_hash"] == config.config_hash() and tags["campaign"] == "camp"
        assert tags["parity"] == "passed"
        all_labels = {**train, **held}
        mask = select_holdout(list(all_labels), [v == "anomaly" for v in all_labels.values()], 0.4)
        assert set(np.asarray(list(all_labels))[mask]) == set(held)
        holdouts.append(set(held))
    assert holdouts[0] <= holdouts[1]  # the slice is fixed: cycle-1 held-out images stay held out
    assert client.get_model_version("am-campaign", "2").tags["parent_version"] == "1"
    versions = {v.version: v for v in list_versions(tracker.tracking_uri, "am-campaign")}
    assert "champion" in versions["1"].aliases + versions["2"].aliases
    assert versions["2"].gate in ("passed", "failed", "inconclusive") and versions["2"].tags["gate_vs"] == "1"

"""The model registry on a real SQLite MLflow store with tiny real models and real decoded PNGs:
lineage tags, torch-vs-ONNX parity (and a broken export caught), the gate, aliases, rollback,
concurrent promotions, the CLI and ``mlflow.onnx.load_model("models:/...@champion")``."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from anomalymatch.config import RegistryConfig
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.scoring import SPEC_KEY, VERSION_KEY, OnnxScorer
from registry import (
    ImageSet,
    LockTimeout,
    PromotionError,
    check_parity,
    compare_scores,
    evaluate_gate,
    hold_promotion_lock,
    holdout_metrics,
    holdout_position,
    promote_to_champion,
    register_cycle,
    resolve_model,
    rollback_champion,
    select_holdout,
    show_version,
)
from registry.onnx_export import export_onnx
from registry.parity import score_torch
from tests.helpers.images import encode_png, gradient_rgb

SPEC = PreprocessSpec(size=32)
CFG = RegistryConfig(parity_top_k=10)
N_IMAGES = 36


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int):
    from training.model import create_model

    torch.manual_seed(seed)
    return create_model(SPEC, pretrained=False).eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real PNG files (gradients; every fourth with a bright square) decoded by the project's loader."""
    from anomalymatch.loader import load_images

    folder = tmp_path_factory.mktemp("registry_images")
    for i in range(N_IMAGES):
        img = gradient_rgb(40, 48, seed=i)
        if i % 4 == 0:
            img[10:30, 12:36] = 250
        (folder / f"img{i:02d}.png").write_bytes(encode_png(img))
    loaded = load_images(folder, SPEC, workers=1)
    ids = np.asarray(loaded.ids, dtype=object)
    assert len(ids) == N_IMAGES
    return ImageSet(loaded.images, ids, np.asarray([int(i[3:5]) % 4 == 0 for i in ids], dtype=np.int64))


@pytest.fixture(scope="module")
def models():
    return {seed: _model(seed) for seed in (0, 1, 2)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("registry_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("registry-tests", artifact_location=(root / "artifacts").as_uri())
    return uri, client, exp


def _split(images: ImageSet):
    """pool = images 0-15, holdout = 16-27, trained-on labels = 28-35 (disjoint)."""
    idx = np.arange(N_IMAGES)
    return images.subset(idx < 16), images.subset((idx >= 16) & (idx < 28)), images.subset(idx >= 28)


def _register(store, images, model, name, cycle=1, holdout_y=None, export=None, cfg=CFG, parent=""):
    uri, client, exp = store
    pool, holdout, train = _split(images)
    if holdout_y is not None:
        holdout = ImageSet(holdout.images, holdout.ids, np.asarray(holdout_y, dtype=np.int64))
    run_id = client.create_run(exp).info.run_id
    lineage = {
        "campaign": "test",
        "cycle": cycle,
        "pool_sha256": "ab" * 32,
        "config_hash": "cd" * 32,
        "parent_version": parent,
        "metrics": {"auprc": 0.5, "auroc": float("nan")},
    }
    reg = register_cycle(
        model, run_id, lineage, pool, holdout, train, tracking_uri=uri, name=name, cfg=cfg, export=export
    )
    client.set_terminated(run_id)
    return reg


def _clone(store, name, version, src_name=None, **tags):
    """Another version with the same (parity-checked) model files and run: cheap extra versions."""
    from registry.store import ensure_registered_model

    _, client, _ = store
    ensure_registered_model(client, name)
    src = client.get_model_version(src_name or name, version)
    return str(client.create_model_version(name, src.source, src.run_id, tags={**src.tags, **tags}).version)


def _aliases(store, name):
    _, client, _ = store
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


@pytest.fixture(scope="module")
def first(store, images, models):
    return _register(store, images, models[0], "am-first")


def test_first_version_has_lineage_passes_parity_and_is_champion(store, first, tmp_path, monkeypatch):
    import mlflow.onnx

    uri, client, _ = store
    assert first.version == "1" and first.parity.passed and first.parity.max_abs_diff <= 1e-4
    assert first.parity.n_images == 16 and first.parity.top_k == 10
    assert first.promotion is not None and first.challenger
    mv = client.get_model_version("am-first", "1")
    tags = mv.tags
    for key in (
        "campaign",
        "cycle",
        "labels_sha256",
        "n_labels",
        "n_anomalies",
        "holdout_sha256",
        "n_holdout",
        "pool_sha256",
        "config_hash",
        "parent_version",
        "metrics",
    ):
        assert key in tags, key
    assert len(tags["labels_sha256"]) == 64 and tags["n_labels"] == "8" and tags["n_anomalies"] == "2"
    assert tags["n_holdout"] == "12" and tags["cycle"] == "1" and tags["campaign"] == "test"
    assert json.loads(tags["metrics"]) == {"auprc": 0.5, "auroc": None}
    assert tags["parity"] == "passed" and tags["gate"] == "no_champion"
    assert _aliases(store, "am-first") == {"champion": "1", "challenger": "1"}

    # the served artefact: an onnx-flavor MLflow model whose model.onnx carries spec and version
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # not mlflow.set_tracking_uri: that state outlives the test
    proto = mlflow.onnx.load_model("models:/am-first@champion")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[VERSION_KEY] == "am-first/1" and PreprocessSpec.from_json(meta[SPEC_KEY]) == SPEC
    assert proto.opset_import[0].version >= 17
    resolved = resolve_model("models:/am-first@champion", uri, tmp_path / "a", "am-first")
    path, version = resolved.path, resolved.version
    assert version == "1" and path.name == "model.onnx"
    scorer = OnnxScorer(path)
    assert scorer.model_version == "am-first/1"
    assert resolve_model("1", uri, tmp_path / "b", "am-first").version == "1"
    assert resolve_model("champion", uri, tmp_path / "c", "am-first").version == "1"
    assert resolve_model(str(path)).version == "1"
    with pytest.raises(LookupError, match="no alias 'nope'"):
        resolve_model("models:/am-first@nope", uri, registered_model="am-first")


def test_exported_model_scores_like_torch_on_real_images(store, first, images, models, tmp_path):
    uri, _, _ = store
    path = resolve_model("1", uri, tmp_path, "am-first").path
    onnx_scores = OnnxScorer(path).score(images.images)
    assert np.abs(onnx_scores - score_torch(models[0], images.images)).max() <= 1e-4
    assert onnx_scores.std() > 1e-3  # real, varied scores: the ranking check means something
    ok = check_parity(models[0], path, images.images, images.ids, tolerance=1e-4, top_k=100)
    assert ok.passed and ok.top_k == N_IMAGES and ok.top_k_identical
    wrong = check_parity(models[1], path, images.images, images.ids)  # a file that is not this model
    assert not wrong.passed and wrong.max_abs_diff > 1e-4


def test_parity_ranking_treats_scores_within_tolerance_as_ties():
    ids = np.asarray(["a", "b", "c", "d"], dtype=object)
    p_torch = np.array([0.9, 0.50004, 0.5, 0.1])
    assert compare_scores(p_torch, p_torch, ids, 1e-4, 3).top_k_identical
    swapped = np.array([0.9, 0.49999, 0.50001, 0.1])  # b and c swap, both within 1e-4 of torch
    result = compare_scores(p_torch, swapped, ids, 1e-4, 3)
    assert result.passed and not result.top_k_identical
    # every score within the tolerance, yet b and c (apart by more than it) swap: the ranking check fails
    bad = compare_scores(np.array([0.9, 0.56, 0.44, 0.1]), np.array([0.9, 0.47, 0.53, 0.1]), ids, 0.1, 3)
    assert bad.max_abs_diff <= 0.1
    assert not bad.passed and bad.reason == "top-3 ranking differs at 2 position(s), first at rank 2"
    assert not compare_scores(p_torch, p_torch + 2e-4, ids, 1e-4, 3).passed
    assert not compare_scores(p_torch, np.full(4, np.nan), ids).passed


def test_holdout_is_fixed_by_id_and_keeps_both_classes_in_training():
    ids = [f"img{i:04d}.png" for i in range(2000)]
    y = np.zeros(2000, dtype=int)
    y[::10] = 1
    mask = select_holdout(ids, y, 0.2)
    assert 0.17 < mask.mean() < 0.23
    assert np.array_equal(mask, select_holdout(ids, y, 0.2))
    # more labels later: every image keeps its side, in any order
    more = select_holdout(ids[::-1] + ["new1", "new2"], np.concatenate([y[::-1], [0, 1]]), 0.2)
    assert np.array_equal(more[:2000][::-1], mask)
    # two anomalies that both hash into the slice stay in training (training needs both classes)
    held = [i for i in ids if holdout_position(i) < 0.2][:2]
    kept = [i for i in ids if holdout_position(i) >= 0.2][:3]
    m = select_holdout(held + kept, [1, 1, 0, 0, 0], 0.2)
    assert not m[:2].any()
    assert not select_holdout(ids, y, 0.0).any()


def _broken_export(model, path, model_version=""):
    """A plausible export bug: the graph normalises with another std than the model was trained with."""
    import copy

    broken = copy.deepcopy(model)
    broken.normalize.std.mul_(1.5)
    return export_onnx(broken, path, model_version=model_version)


def test_broken_export_is_caught_and_can_never_be_promoted(store, images, models, tmp_path):
    uri, client, _ = store
    reg = _register(store, images, models[1], "am-broken", export=_broken_export)
    assert not reg.parity.passed and reg.parity.max_abs_diff > 1e-4 and "max |p_torch - p_onnx|" in reg.parity.reason
    assert reg.promotion is None and not reg.challenger
    assert client.get_model_version("am-broken", reg.version).tags["parity"] == "failed"
    assert "champion" not in _aliases(store, "am-broken")
    for force in (False, True):
        with pytest.raises(PromotionError, match="parity"):
            promote_to_champion(reg.version, uri, "am-broken", force=force, reason="I insist")
    assert "champion" not in _aliases(store, "am-broken")


def test_gate_metrics_and_decisions():
    ids = np.asarray([f"x{i}" for i in range(8)], dtype=object)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    good = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.1, 0.05, 0.0])
    bad = good[::-1].copy()
    assert holdout_metrics(y, good, ids) == {"auprc": 1.0, "precision_at_top": 1.0, "k": 2}
    assert evaluate_gate(y, good, bad, ids).decision.value == "passed"
    blocked = evaluate_gate(y, bad, good, ids)
    assert blocked.decision.value == "failed" and not blocked.passed and "AUPRC" in blocked.reason
    # within tolerance: a slightly worse challenger still passes, a stricter tolerance blocks it
    near = good.copy()
    near[1] = 0.25  # second anomaly falls below one nominal
    assert evaluate_gate(y, near, good, ids, auprc_tolerance=0.2, precision_tolerance=0.5).passed
    assert not evaluate_gate(y, near, good, ids, auprc_tolerance=0.01).passed
    assert evaluate_gate(y, good, None, ids).decision.value == "no_champion"
    none = evaluate_gate(np.zeros(8), good, bad, ids)
    assert none.decision.value == "inconclusive" and not none.passed


def test_gate_with_confidence_reads_small_differences_as_noise_and_large_ones_as_regressions():
    from registry.gate import worse_share

    ids = np.asarray([f"x{i}" for i in range(8)], dtype=object)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    good = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.1, 0.05, 0.0])
    near = good.copy()
    near[1] = 0.25  # one anomaly below one nominal: worse on the point estimates, by one swapped pair
    assert not evaluate_gate(y, near, good, ids).passed  # point estimates alone: blocked
    noisy = evaluate_gate(y, near, good, ids, confidence=0.9)
    assert noisy.passed and 0 < noisy.worse_share < 0.9 and "bootstrap resamples" in noisy.reason
    assert worse_share(y, near, good, ids, 0.02, 0.05) == noisy.worse_share  # seeded by the ids: repeatable
    # 300 images, 30 anomalies: a challenger that ranks the anomalies in the middle is a real regression
    rng = np.random.default_rng(0)
    ids = np.asarray([f"y{i:03d}" for i in range(300)], dtype=object)
    y = np.zeros(300, dtype=np.int64)
    y[:30] = 1
    champion = np.where(y == 1, rng.uniform(0.6, 1.0, 300), rng.uniform(0.0, 0.7, 300))
    challenger = np.where(y == 1, rng.uniform(0.3, 0.8, 300), rng.uniform(0.0, 0.7, 300))
    blocked = evaluate_gate(y, challenger, champion, ids, confidence=0.9)
    assert blocked.decision.value == "failed" and blocked.worse_share >= 0.9, blocked
    assert evaluate_gate(y, champion, challenger, ids, confidence=0.9).decision.value == "passed"


def test_gate_promotes_a_better_challenger_and_blocks_a_worse_one(store, images, models, first):
    uri, client, _ = store
    name = "am-gate"
    _, holdout, _ = _split(images)
    scores = {s: score_torch(m, holdout.images) for s, m in models.items()}

    def labels_favouring(seed):  # the 3 images that model ranks highest are the anomalies
        y = np.zeros(len(holdout.ids), dtype=np.int64)
        y[np.argsort(-scores[seed])[:3]] = 1
        return y

    v1 = _clone(store, name, first.version, src_name="am-first")  # model 0, trained on images 28-35
    assert promote_to_champion(v1, uri, name).changed  # its gate: no champion then, none now
    # challenger 2 ranks the held-out anomalies perfectly, the champion does not: promoted
    y_better = labels_favouring(1)
    assert holdout_metrics(y_better, scores[0], holdout.ids)["auprc"] < 0.9
    v2 = _register(store, images, models[1], name, cycle=2, holdout_y=y_better, parent=v1)
    assert v2.gate.decision.value == "passed" and v2.gate.champion_version == v1
    assert v2.gate.challenger["auprc"] == 1.0 and v2.promotion is not None
    assert _aliases(store, name) == {"champion": v2.version, "previous": v1, "challenger": v2.version}
    # challenger 3 on labels the champion ranks perfectly and it does not: blocked, champion stays
    y_worse = labels_favouring(1)
    ch = holdout_metrics(y_worse, scores[2], holdout.ids)
    assert ch["auprc"] < 1.0 - CFG.gate_auprc_tolerance or ch["precision_at_top"] < 1.0 - CFG.gate_precision_tolerance
    v3 = _register(store, images, models[2], name, cycle=3, holdout_y=y_worse, parent=v2.version)
    assert v3.gate.decision.value == "failed" and v3.promotion is None and v3.challenger
    tags = client.get_model_version(name, v3.version).tags
    assert tags["gate"] == "failed" and tags["gate_vs"] == v2.version and "worse than champion" in tags["gate_reason"]
    assert _aliases(store, name)["champion"] == v2.version
    with pytest.raises(PromotionError, match="did not pass the gate"):
        promote_to_champion(v3.version, uri, name)
    with pytest.raises(ValueError, match="--reason"):
        promote_to_champion(v3.version, uri, name, force=True)
    move = promote_to_champion(v3.version, uri, name, force=True, reason="expert prefers its candidates")
    assert move.changed and move.previous == v2.version
    tags = client.get_model_version(name, v3.version).tags
    assert tags["forced"] == "true" and tags["promotion_reason"] == "expert prefers its candidates"
    assert rollback_champion(uri, name).champion == v2.version


def test_rollback_restores_the_previous_champion(store, first):
    uri, _, _ = store
    name = "am-first"
    v2 = _clone(store, name, "1", gate="passed", gate_vs="1")
    v3 = _clone(store, name, "1", gate="passed", gate_vs=v2)
    assert promote_to_champion(v2, uri, name).previous == "1"
    assert promote_to_champion(v3, uri, name).previous == v2
    assert promote_to_champion(v3, uri, name).changed is False  # already champion: no-op
    move = rollback_champion(uri, name, reason="bad candidates")
    assert (move.champion, move.previous, move.replaced) == (v2, "1", v3)
    assert _aliases(store, name)["champion"] == v2 and _aliases(store, name)["previous"] == "1"
    assert "bad candidates" in show_version(v3, uri, name).tags["rolled_back_at"]
    rollback_champion(uri, name)
    aliases = _aliases(store, name)
    assert aliases["champion"] == "1" and "previous" not in aliases
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback_champion(uri, name)
    # a version whose gate ran against another champion is stale: refused without --force
    with pytest.raises(PromotionError, match="champion is now 1"):
        promote_to_champion(v3, uri, name)


def test_concurrent_promotions_leave_exactly_one_champion_and_a_consistent_chain(store, first):
    uri, client, _ = store
    name = "am-first"
    promote_to_champion("1", uri, name, force=True, reason="reset")
    start = _aliases(store, name)["champion"]
    versions = [_clone(store, name, "1") for _ in range(6)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(versions))

    def promote(v):
        try:
            barrier.wait()
            promote_to_champion(v, uri, name, force=True, reason=f"thread {v}", lock_timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported below
            import traceback

            errors.append("".join(traceback.format_exception(exc)))

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    aliases = _aliases(store, name)
    champions = [v for a, v in aliases.items() if a == "champion"]
    assert len(champions) == 1 and champions[0] in versions
    # every promotion replaced the champion the one before it installed: following replaced_version from
    # the champion visits each promoted version exactly once and ends at the starting champion
    chain, v = [], champions[0]
    while v in versions and v not in chain:
        chain.append(v)
        v = client.get_model_version(name, v).tags["replaced_version"]
    assert sorted(chain, key=int) == sorted(versions, key=int) and v == start
    assert aliases["previous"] == client.get_model_version(name, champions[0]).tags["replaced_version"]
    assert "am-first.promotion-lock" not in {m.name for m in client.search_registered_models()}


def test_lock_blocks_other_promoters_until_released_and_stale_locks_are_broken(store, first):
    import time

    uri, client, _ = store
    name = "am-first"
    other = _clone(store, name, "1")
    with hold_promotion_lock(client, name, timeout=5):
        with pytest.raises(LockTimeout, match="locked by"):
            promote_to_champion(other, uri, name, force=True, reason="x", lock_timeout=0.3)
    assert promote_to_champion(other, uri, name, force=True, reason="x").champion == other
    # a crashed holder: its lock is older than stale_after and gets broken
    client.create_registered_model(
        "am-first.promotion-lock", tags={"anomalymatch.lock_token": "dead", "anomalymatch.lock_since": "0"}
    )
    t0 = time.monotonic()
    with hold_promotion_lock(client, name, timeout=5, stale_after=60) as token:
        assert client.get_registered_model("am-first.promotion-lock").tags["anomalymatch.lock_token"] == token
    assert time.monotonic() - t0 < 5


def test_cli_list_show_promote_rollback_export(store, first, tmp_path, capsys):
    from anomalymatch.cli import main

    uri, _, _ = store
    name = "am-cli"  # a model of its own: the test does not depend on what other tests promoted
    v1, v2 = _clone(store, name, "1", src_name="am-first"), _clone(store, name, "1", src_name="am-first")
    common = ["--tracking-uri", uri, "--name", name]
    assert main(["registry", "promote", v1, "--force", *common]) == 1
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["registry", "promote", v1, "--force", "--reason", "cli test", *common]) == 0
    assert f"version {v1} is now champion" in capsys.readouterr().out
    assert main(["registry", "promote", v2, "--force", "--reason", "cli test 2", *common]) == 0
    assert f"version {v2} is now champion (previous: {v1})" in capsys.readouterr().out
    assert main(["registry", "list", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["VERSION", "ALIASES", "PARITY", "GATE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "champion" in rows[v2].split()[1] and "previous" in rows[v1].split()[1]
    assert "passed" in rows[v1] and "no_champion" in rows[v1]
    assert main(["registry", "show", v1, *common]) == 0
    shown = capsys.readouterr().out
    assert "labels_sha256: " in shown and "parity: passed" in shown and "config_hash: " in shown
    assert main(["registry", "rollback", *common]) == 0
    assert f"rolled back from version {v2} to {v1}" in capsys.readouterr().out
    assert _aliases(store, name)["champion"] == v1
    out_file = tmp_path / "exported" / "model.onnx"
    assert main(["registry", "export", v1, "--out", str(out_file), *common]) == 0
    assert OnnxScorer(out_file).model_version == "am-first/1"  # the clone shares version 1's file
    assert main(["registry", "show", "999", *common]) == 1
    assert "no version 999" in capsys.readouterr().err
    assert main(["registry", "list", "--tracking-uri", uri, "--name", "nothing-here"]) == 0
    assert "no versions" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["promote", "abc"], "'abc' is not a version number"),
        (["promote", "1x", "--force", "--reason", "r"], "'1x' is not a version number"),
        (["show", "abc"], "'abc' is not a version number"),
        (["show", "12345"], "no version 12345"),
        (["export", "nosuchalias", "--out", "x.onnx"], "no alias 'nosuchalias'"),
        (["export", "models:/am-first/77", "--out", "x.onnx"], "no version 77"),
        (["export", "models:/broken", "--out", "x.onnx"], "cannot read model reference"),
    ],
)
def test_cli_bad_version_alias_or_reference_is_one_error_line(store, first, tmp_path, capsys, argv, message):
    """Every registry verb given a bad version, alias or reference: one 'error:' line, exit code 1."""
    from anomalymatch.cli import main

    uri, _, _ = store
    argv = [a if a != "x.onnx" else str(tmp_path / "x.onnx") for a in argv]
    assert main(["registry", *argv, "--tracking-uri", uri, "--name", "am-first"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x.onnx").exists()

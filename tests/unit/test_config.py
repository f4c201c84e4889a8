"""Config: YAML defaults, command-line overrides, validation, hashing."""

import dataclasses
from pathlib import Path

import pytest

from anomalymatch.config import PRESETS, TRAIN_PRESET, AppConfig, load_config


def test_defaults_are_the_papers(tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMALYMATCH_HOME", raising=False)
    cfg = load_config()
    assert (cfg.fixmatch.batch_size, cfg.fixmatch.uratio, cfg.fixmatch.threshold) == (16, 5, 0.95)
    assert (cfg.fixmatch.lr, cfg.fixmatch.momentum, cfg.fixmatch.weight_decay) == (0.0075, 0.9, 7.5e-4)
    assert cfg.fixmatch.ema_decay == 0.99 and cfg.cycle.iterations == 100
    assert cfg.preprocess.mean == (0.5, 0.5, 0.5) and cfg.preprocess.std == (0.5, 0.5, 0.5)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fixmatch:\n  threshold: 0.9\ncycle:\n  iterations: 7\npreprocess:\n  size: 96\n")
    cfg = load_config(path, {"cycle.iterations": 3, "cycle.cycles": None})
    assert cfg.fixmatch.threshold == 0.9
    assert cfg.cycle.iterations == 3  # command line wins
    assert cfg.cycle.cycles == 1  # None means "not given"
    assert cfg.preprocess.size == 96
    assert AppConfig().config_hash() != cfg.config_hash()
    assert cfg.config_hash() == load_config(path, {"cycle.iterations": 3, "data_dir": "/elsewhere"}).config_hash()


@pytest.mark.parametrize(
    "text, message",
    [
        ("fixmatch:\n  treshold: 0.9\n", "unknown key"),
        ("bogus: 1\n", "unknown config key"),
        ("fixmatch:\n  threshold: 2\n", "threshold"),
        ("preprocess:\n  crop: 0\n", "crop"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_bad_config_is_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ANOMALYMATCH_HOME", str(tmp_path))
    assert load_config().data_path == tmp_path.resolve()


def test_moved_keys_say_where_they_went(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("serving:\n  bulk_workers: 4\nretrain:\n  token_env: MY_TOKEN\n")
    with pytest.raises(
        ValueError,
        match=r"serving.bulk_workers is now workers .*retrain.token_env is now "
        r"labelstore.token_env",
    ):
        load_config(path)


def test_hash_covers_the_recipe_sections_only():
    base = AppConfig()
    assert base.replace(serving=dataclasses.replace(base.serving, port=1234)).config_hash() == base.config_hash()
    assert base.replace(workers=7).config_hash() == base.config_hash()
    changed = base.replace(fixmatch=dataclasses.replace(base.fixmatch, backbone_lr_scale=0.5))
    assert changed.config_hash() != base.config_hash()


def test_study_knobs_are_validated():
    with pytest.raises(ValueError, match="head_init"):
        load_config(None, {"fixmatch.head_init": "magic"})
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        load_config(None, {"fixmatch.backbone_lr_scale": 2.0})


def test_serving_dependencies_are_listed_once():
    """deploy/bentofile.yaml installs exactly pyproject's core dependencies plus its [serving] extra."""
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["serving"])
    bento = yaml.safe_load((root / "deploy" / "bentofile.yaml").read_text())
    assert set(bento["python"]["packages"]) == expected
    assert not any(dep.startswith(("torch", "timm")) for dep in expected)  # the service stays torch-free
    assert 'pip install --no-cache-dir -e ".[serving]"' in (root / "deploy" / "Dockerfile").read_text()


def test_presets_sit_under_the_file_and_the_options(tmp_path):
    balanced = load_config(None, {"preset": "balanced"})
    assert (balanced.preset, balanced.preprocess.size, balanced.fixmatch.freeze_blocks) == ("balanced", 96, 3)
    assert balanced.fixmatch.lr == load_config().fixmatch.lr  # everything else is the default
    path = tmp_path / "c.yaml"
    path.write_text("preset: balanced\npreprocess: {size: 128}\n")
    from_file = load_config(path)
    assert (from_file.preprocess.size, from_file.fixmatch.freeze_blocks) == (128, 3)  # the file wins over the preset
    assert load_config(path, {"preprocess.size": 64}).preprocess.size == 64  # and the options over both
    assert load_config(None, {"preset": "paper"}).to_dict() == {**load_config().to_dict(), "preset": "paper"}
    again = load_config(None, balanced.to_dict())  # a logged config reads back as itself
    assert again == balanced and again.config_hash() == balanced.config_hash()
    fast = load_config(None, {"preset": "fast"})
    assert (fast.preprocess.size, fast.fixmatch.freeze_blocks, fast.fixmatch.lambda_u) == (96, 3, 0.0)
    assert fast.cycle.iterations == 300
    assert fast.config_hash() != balanced.config_hash()  # another recipe, so another model version's spec
    with pytest.raises(ValueError, match="unknown preset 'quick'; known: \\['balanced', 'fast', 'paper'\\]"):
        load_config(None, {"preset": "quick"})


def test_a_default_preset_applies_only_where_neither_the_options_nor_the_file_name_one(tmp_path):
    assert TRAIN_PRESET in PRESETS
    assert load_config(None, {}, default_preset="balanced") == load_config(None, {"preset": "balanced"})
    assert load_config(None, {"preset": "paper"}, default_preset="balanced").preprocess.size == 64
    path = tmp_path / "c.yaml"
    path.write_text("preset: fast\n")
    assert load_config(path, default_preset="balanced").cycle.iterations == 300  # the file's preset
    path.write_text("preprocess: {size: 80}\n")
    chosen = load_config(path, default_preset="balanced")  # the file sits over the default preset
    assert (chosen.preset, chosen.preprocess.size, chosen.fixmatch.freeze_blocks) == ("balanced", 80, 3)
    assert load_config().preset == ""  # without one: the paper's recipe

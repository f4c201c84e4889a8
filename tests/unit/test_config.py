"""Config: YAML defaults, command-line overrides, validation, hashing."""
import pytest

from anomalymatch.config import AppConfig, load_config


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

"""Helpers for the serving tests: tiny real models exported to ONNX and registered in a real MLflow
registry on SQLite (this module imports torch; the service under test never does)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

SIZE = 32
MODEL_NAME = "anomalymatch"


@dataclass
class Registry:
    tracking_uri: str
    onnx_paths: dict[str, Path]  # version -> the exported file that was registered
    root: Path


def export_tiny_model(path: Path, seed: int, size: int = SIZE, version: str = "") -> Path:
    """A randomly initialised AnomalyNet (seeded), exported with registry.onnx_export.export_onnx."""
    import torch

    from anomalymatch.preprocessing import PreprocessSpec
    from registry.onnx_export import export_onnx
    from training.model import create_model

    torch.manual_seed(seed)
    model = create_model(PreprocessSpec(size=size), pretrained=False).eval()
    with torch.no_grad():  # make the head matter: random scores spread over (0, 1)
        model.backbone.classifier.weight.mul_(2.0)
    return export_onnx(model, path, model_version=version)


_REGISTRIES: dict[tuple[int, int, str], Registry] = {}


def shared_registry(tmp_path_factory, versions: int = 2, size: int = SIZE) -> Registry:  # type: ignore[no-untyped-def]
    """One registry per test session (exports take seconds); tests must not move its alias."""
    key = (versions, size, "1")
    if key not in _REGISTRIES:
        _REGISTRIES[key] = make_registry(tmp_path_factory.mktemp("registry"), versions, size)
    return _REGISTRIES[key]


def make_registry(root: Path, versions: int = 2, size: int = SIZE, alias_version: str = "1") -> Registry:
    """Register ``versions`` tiny models as versions 1..n of ``anomalymatch``; alias champion -> alias_version."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("serving-tests", artifact_location=(root / "artifacts").as_uri())
    paths: dict[str, Path] = {}
    mlflow.set_tracking_uri(uri)
    try:
        for k in range(versions):
            version = str(k + 1)
            path = export_tiny_model(root / f"v{version}.onnx", seed=k + 3, size=size, version=version)
            with mlflow.start_run(experiment_id=exp):
                info = mlflow.onnx.log_model(
                    onnx.load(str(path)),
                    name="model",
                    registered_model_name=MODEL_NAME,
                    pip_requirements=["onnxruntime"],
                )
            assert str(info.registered_model_version) == version
            paths[version] = path
        client.set_registered_model_alias(MODEL_NAME, "champion", alias_version)
    finally:
        mlflow.set_tracking_uri(None)
    return Registry(uri, paths, root)


def write_pngs(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    """``n`` random-texture PNGs (different per image) named img_0000.png ..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img[: size // 2] //= (i % 7) + 1
        path = folder / f"img_{i:04d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths

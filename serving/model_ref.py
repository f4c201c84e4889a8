"""Resolve a model reference to a local ONNX file and the version it is, without torch.

References: ``models:/<name>@<alias>`` (the alias is looked up to its version number, so the scores
say which version made them), ``models:/<name>/<version>``, a bare version number of the registered
model, or a local ``.onnx`` file (or a folder holding ``model.onnx``, as MLflow's onnx flavour writes it).
Registered versions are downloaded once into ``cache_dir/<name>/<version>/``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ONNX_FILE = "model.onnx"
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a registered model with an alias or version, or a local file."""

    text: str
    name: str = ""
    alias: str = ""
    version: str = ""
    path: str = ""

    @property
    def is_alias(self) -> bool:
        return bool(self.alias)


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: the local ONNX file and the version it is (``"file"`` for a plain file)."""

    path: Path
    version: str
    ref: ModelRef


def parse_model_ref(text: str, registered_model: str = "anomalymatch") -> ModelRef:
    """Parse ``models:/name@alias``, ``models:/name/3``, ``3`` or a path; ``ValueError`` says what is accepted."""
    text = str(text).strip()
    match = _REGISTRY_URI.match(text)
    if match:
        return ModelRef(text, name=match["name"], alias=match["alias"] or "", version=match["version"] or "")
    if text.isdigit():
        return ModelRef(text, name=registered_model, version=text)
    if text.startswith("models:/"):
        raise ValueError(f"cannot read model reference {text!r}: use models:/<name>@<alias> or models:/<name>/<version>")
    path = Path(text).expanduser()
    if path.is_dir() and (path / ONNX_FILE).is_file():
        path = path / ONNX_FILE
    if not path.is_file():
        raise ValueError(f"model reference {text!r} is neither models:/<name>@<alias>, models:/<name>/<version>, "
                         "a version number, nor an existing .onnx file")
    return ModelRef(text, path=str(path.resolve()))


def _client(tracking_uri: str | None):  # type: ignore[no-untyped-def]
    try:
        from mlflow import MlflowClient
    except ImportError as exc:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("serving registered models needs MLflow: pip install 'mlflow>=3.4,<4'") from exc
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def resolve_tracking_uri(tracking_uri: str | None, data_dir: str | os.PathLike) -> str:
    """Config wins, then ``MLFLOW_TRACKING_URI``, then the embedded SQLite store under ``data_dir``
    (the same rule as ``training.tracking.resolve_tracking_uri``, without importing training)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(data_dir) / 'mlflow.db').resolve()}"


def current_version(ref: ModelRef, tracking_uri: str | None) -> str:
    """The version a reference points at now (an alias is looked up in the registry)."""
    if ref.path:
        return "file"
    if ref.version:
        return ref.version
    try:
        return str(_client(tracking_uri).get_model_version_by_alias(ref.name, ref.alias).version)
    except Exception as exc:  # MlflowException and connection errors: say what was asked
        raise LookupError(f"cannot resolve {ref.text} in the MLflow registry at {tracking_uri}: {exc}") from exc


def _find_onnx(folder: Path) -> Path:
    direct = folder / ONNX_FILE
    if direct.is_file():
        return direct
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise FileNotFoundError(f"no .onnx file in the downloaded model at {folder}; register models with "
                                "registry.export_onnx + mlflow.onnx.log_model")
    return found[0]


def resolve_model(ref: ModelRef | str, tracking_uri: str | None, cache_dir: str | os.PathLike,
                  registered_model: str = "anomalymatch") -> ResolvedModel:
    """Download (once) and locate the ONNX file of ``ref``; the version is pinned at resolution time."""
    if isinstance(ref, str):
        ref = parse_model_ref(ref, registered_model)
    if ref.path:
        return ResolvedModel(Path(ref.path), "file", ref)
    version = current_version(ref, tracking_uri)
    target = Path(cache_dir) / ref.name / version
    if not (target / ".complete").is_file():
        import mlflow.artifacts

        tmp = target.with_name(f"{version}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        # Ask this registry for the version's artifact location: a bare models:/ URI would be looked up
        # in the default registry, not the one at tracking_uri.
        source = _client(tracking_uri).get_model_version_download_uri(ref.name, version)
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri)
        (tmp / ".complete").touch()
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(_find_onnx(target), version, ref)

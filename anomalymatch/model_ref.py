"""One way to name a model and one way to find it: parse a reference, resolve it to a local ONNX file and
the registry version it is, and the one rule for which MLflow store is meant. Torch-free; mlflow is
imported only when a registered model must be looked up or downloaded.

References:
- ``models:/<name>@<alias>``: the alias is looked up to its version at resolution time, so scores say
  which version made them;
- ``models:/<name>/<version>``, or a bare version number (``3``) of the registered model;
- a bare alias of the registered model (``champion``);
- a local ``.onnx`` file, or a folder holding ``model.onnx`` (as MLflow's onnx flavour writes it). Its
  version is the registered version written into the file's metadata by the export ("" when it has none).

Registered versions are downloaded once into ``cache_dir/<name>/<version>/`` (a temporary folder when no
``cache_dir`` is given).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_NAME = "anomalymatch"
ONNX_FILE = "model.onnx"
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def resolve_tracking_uri(tracking_uri: str | None, data_dir: str | os.PathLike) -> str:
    """The MLflow store meant: the configured URI, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite
    store ``<data_dir>/mlflow.db`` (the folder is created)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a registered model with an alias or a version, or a local file (``path``)."""

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
    """A model ready to load: the local ONNX file and its registry version ("" for a file that has none)."""

    path: Path
    version: str
    ref: ModelRef


def parse_model_ref(text: str | int, registered_model: str = DEFAULT_NAME) -> ModelRef:
    """Parse a reference (see the module docstring); ``ValueError`` says what is accepted."""
    text = str(text).strip()
    match = _REGISTRY_URI.match(text)
    if match:
        return ModelRef(text, name=match["name"], alias=match["alias"] or "", version=match["version"] or "")
    if text.isdigit():
        return ModelRef(text, name=registered_model, version=text)
    if text.startswith("models:/"):
        raise ValueError(
            f"cannot read model reference {text!r}: use models:/<name>@<alias> or models:/<name>/<version>"
        )
    path = Path(text).expanduser()
    if path.is_dir() and (path / ONNX_FILE).is_file():
        path = path / ONNX_FILE
    if path.is_file():
        if path.suffix != ".onnx":
            raise ValueError(f"{text} is not an .onnx file; give a models:/ URI, a version number or a .onnx path")
        return ModelRef(text, path=str(path.resolve()))
    if _ALIAS.match(text) and not text.endswith(".onnx"):
        return ModelRef(text, name=registered_model, alias=text)
    raise ValueError(
        f"model reference {text!r} is neither models:/<name>@<alias>, models:/<name>/<version>, "
        "a version number, an alias, nor an existing .onnx file"
    )


def mlflow_client(tracking_uri: str | None):  # type: ignore[no-untyped-def]
    """An MLflow client whose tracking and registry URIs are both ``tracking_uri``."""
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("registered models need MLflow: pip install 'mlflow>=3.4,<4'") from exc
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def current_version(ref: ModelRef, tracking_uri: str | None) -> str:
    """The version a registered reference points at now (an alias is looked up in the registry)."""
    if ref.path:
        return file_version(Path(ref.path))
    if ref.version:
        return ref.version
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client(tracking_uri).get_model_version_by_alias(ref.name, ref.alias).version)
    except MlflowException as exc:
        raise LookupError(
            f"registered model '{ref.name}' has no alias '{ref.alias}' in the registry at "
            f"{tracking_uri}; promote a version first (`anomalymatch registry promote VERSION`): "
            f"{exc}"
        ) from None
    except OSError as exc:  # connection errors: say what was asked
        raise LookupError(f"cannot resolve {ref.text} in the MLflow registry at {tracking_uri}: {exc}") from exc


def file_version(path: Path) -> str:
    """The registered version written into an exported file's metadata ("anomalymatch/3" -> "3"), or ""."""
    import onnx

    from anomalymatch.scoring import VERSION_KEY

    proto = onnx.load(str(path), load_external_data=False)
    value = next((p.value for p in proto.metadata_props if p.key == VERSION_KEY), "")
    return value.rpartition("/")[2]


def resolve_model(
    ref: ModelRef | str | int,
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    registered_model: str = DEFAULT_NAME,
) -> ResolvedModel:
    """Locate (downloading once) the ONNX file of ``ref``; the version is pinned at resolution time."""
    if not isinstance(ref, ModelRef):
        ref = parse_model_ref(ref, registered_model)
    if ref.path:
        return ResolvedModel(Path(ref.path), file_version(Path(ref.path)), ref)
    version = current_version(ref, tracking_uri)
    cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="anomalymatch-model-"))
    target = cache / ref.name / version
    if not (target / ".complete").is_file():
        tmp = target.with_name(f"{version}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        _download_version(mlflow_client(tracking_uri), ref.name, version, tmp)
        (tmp / ".complete").touch()
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(_find_onnx(target, ref), version, ref)


def _download_version(client, name: str, version: str, dst: Path) -> None:
    """Download a version's model folder with this client's tracking URI (not the process-wide one)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        source = client.get_model_version_download_uri(name, version)
    except MlflowException as exc:
        raise LookupError(
            f"registered model '{name}' has no version {version}; see `anomalymatch registry list`: {exc}"
        ) from None
    if source.startswith("runs:/"):
        run_id, path = RunsArtifactRepository.parse_runs_uri(source)
        client.download_artifacts(run_id, path, str(dst))
    else:
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=client.tracking_uri)


def _find_onnx(folder: Path, ref: ModelRef) -> Path:
    direct = folder / ONNX_FILE
    if direct.is_file():
        return direct
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise FileNotFoundError(
            f"{ref.text} has no .onnx file (downloaded to {folder}); was it registered by "
            "AnomalyMatch (registry.register_cycle)?"
        )
    return found[0]

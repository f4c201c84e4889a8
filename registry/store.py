"""Reading the registry: tag names, aliases, ``list_versions``, ``resolve_model``. mlflow is imported lazily."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

DEFAULT_NAME = "anomalymatch"
CHAMPION = "champion"  # the served version
CHALLENGER = "challenger"  # the latest version that passed parity
PREVIOUS = "previous"  # the champion before the current one: where `rollback` goes
MODEL_ARTIFACT = "registry/model"  # onnx-flavor MLflow model on the cycle run: MLmodel + model.onnx
TRAIN_IDS_ARTIFACT = "registry/train_labels.csv"
HOLDOUT_ARTIFACT = "registry/holdout_labels.csv"
ONNX_FILE = "model.onnx"

# model-version tags
LINEAGE_KEYS = ("campaign", "cycle", "labels_sha256", "n_labels", "n_anomalies", "holdout_sha256", "n_holdout",
                "pool_sha256", "config_hash", "parent_version", "metrics")
PARITY, PARITY_DETAIL = "parity", "parity_detail"
GATE, GATE_VS, GATE_REASON, GATE_DETAIL = "gate", "gate_vs", "gate_reason", "gate_detail"
PROMOTED_AT, PROMOTION_REASON, FORCED, REPLACED = "promoted_at", "promotion_reason", "forced", "replaced_version"
ROLLED_BACK_AT = "rolled_back_at"
PASSED = "passed"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def mlflow_client(tracking_uri: str | None):
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("the model registry needs MLflow: pip install 'mlflow>=3.4,<4'") from exc
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="AnomalyMatch anomaly classifier (ONNX, uint8 NHWC in, "
                                                          "anomaly probability out)")
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise


def get_aliases(client, name: str) -> dict[str, str]:
    """alias -> version of registered model ``name`` ({} if it does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def get_version(client, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(f"registered model '{name}' has no version {version}; "
                              f"see `anomalymatch registry list`") from None
        raise


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as `registry list/show` presents it."""

    name: str
    version: str
    run_id: str
    source: str
    created: int  # ms since the epoch
    aliases: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def parity(self) -> str:
        return self.tags.get(PARITY, "unknown")

    @property
    def gate(self) -> str:
        return self.tags.get(GATE, "unknown")

    @property
    def holdout(self) -> dict:
        """The challenger-side gate metrics (AUPRC, precision at top) on the held-out labels."""
        try:
            return json.loads(self.tags.get(GATE_DETAIL, "{}")).get("challenger", {})
        except ValueError:
            return {}

    @property
    def metrics(self) -> dict:
        try:
            return json.loads(self.tags.get("metrics", "{}"))
        except ValueError:
            return {}


def _info(mv, aliases: dict[str, str]) -> VersionInfo:
    version = str(mv.version)
    return VersionInfo(mv.name, version, mv.run_id or "", mv.source or "", int(mv.creation_timestamp or 0),
                       tuple(sorted(a for a, v in aliases.items() if v == version)), dict(mv.tags or {}))


def list_versions(tracking_uri: str | None = None, name: str = DEFAULT_NAME) -> list[VersionInfo]:
    """Every version of ``name``, newest first, with its tags and aliases."""
    client = mlflow_client(tracking_uri)
    aliases = get_aliases(client, name)
    if not aliases and not _exists(client, name):
        return []
    versions = client.search_model_versions(f"name='{name}'")
    return sorted((_info(mv, aliases) for mv in versions), key=lambda v: -int(v.version))


def show_version(version: str | int, tracking_uri: str | None = None, name: str = DEFAULT_NAME) -> VersionInfo:
    client = mlflow_client(tracking_uri)
    return _info(get_version(client, name, version), get_aliases(client, name))


def _exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


class ResolvedModel(NamedTuple):
    path: Path  # local model.onnx
    version: str  # registered version number, "" for a bare file without one


def resolve_model(ref: str | int, tracking_uri: str | None = None, name: str = DEFAULT_NAME,
                  dst: str | os.PathLike | None = None) -> ResolvedModel:
    """A local ONNX file and its version from ``ref``: ``models:/<name>@<alias>`` or ``models:/<name>/<n>``,
    a version number, an alias of ``name`` (``champion``), or a path to an ``.onnx`` file."""
    ref = str(ref)
    path = Path(ref)
    if ref.endswith(".onnx") and not ref.startswith("models:/"):
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        return ResolvedModel(path, _onnx_version(path))
    if ref.isdigit():
        uri, model_name, version = f"models:/{name}/{ref}", name, ref
    elif ref.startswith("models:/"):
        body = ref[len("models:/"):]
        if "@" in body:
            model_name, alias = body.rsplit("@", 1)
            version = None
        else:
            model_name, _, version = body.rpartition("/")
            alias = None
        client = mlflow_client(tracking_uri)
        if version is None:
            version = get_aliases(client, model_name).get(alias)
            if version is None:
                raise LookupError(f"registered model '{model_name}' has no alias '{alias}'; "
                                  "promote a version first (`anomalymatch registry promote VERSION`)")
        uri = f"models:/{model_name}/{version}"
    elif path.exists():
        raise ValueError(f"{ref} is not an .onnx file; give a models:/ URI, a version number or a .onnx path")
    else:
        uri, model_name = f"models:/{name}@{ref}", name
        return resolve_model(uri, tracking_uri, name, dst)
    local = _download_version(mlflow_client(tracking_uri), model_name, str(version), dst)
    onnx_path = local / ONNX_FILE if local.is_dir() else local
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{uri} has no {ONNX_FILE} (got {local}); was it registered by AnomalyMatch?")
    return ResolvedModel(onnx_path, str(version))


def _onnx_version(path: Path) -> str:
    """The registered version written into the file's metadata ("anomalymatch/3" -> "3"), or ""."""
    import onnx

    from anomalymatch.scoring import VERSION_KEY

    proto = onnx.load(str(path), load_external_data=False)
    value = next((p.value for p in proto.metadata_props if p.key == VERSION_KEY), "")
    return value.rpartition("/")[2]


def _download_version(client, name: str, version: str, dst: str | os.PathLike | None) -> Path:
    """Download a version's model directory with this client's tracking URI (not the global one)."""
    import tempfile

    import mlflow
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    get_version(client, name, version)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="anomalymatch-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    source = client.get_model_version_download_uri(name, version)
    if source.startswith("runs:/"):
        run_id, path = RunsArtifactRepository.parse_runs_uri(source)
        return Path(client.download_artifacts(run_id, path, str(dst)))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                   tracking_uri=client.tracking_uri))

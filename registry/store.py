"""Reading the registry: tag names, aliases, ``list_versions``, ``show_version``. mlflow is imported lazily.
Model references are resolved by ``anomalymatch.model_ref`` (re-exported here as ``resolve_model``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from anomalymatch.model_ref import DEFAULT_NAME, ONNX_FILE, ResolvedModel, mlflow_client, resolve_model

CHAMPION = "champion"  # the served version
CHALLENGER = "challenger"  # the latest version that passed parity
PREVIOUS = "previous"  # the champion before the current one: where `rollback` goes
MODEL_ARTIFACT = "registry/model"  # onnx-flavor MLflow model on the cycle run: MLmodel + model.onnx
TRAIN_IDS_ARTIFACT = "registry/train_labels.csv"
HOLDOUT_ARTIFACT = "registry/holdout_labels.csv"

# model-version tags
LINEAGE_KEYS = (
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
    "kind",
    "metrics",
)
PARITY, PARITY_DETAIL = "parity", "parity_detail"
GATE, GATE_VS, GATE_REASON, GATE_DETAIL = "gate", "gate_vs", "gate_reason", "gate_detail"
PROMOTED_AT, PROMOTION_REASON, FORCED, REPLACED = "promoted_at", "promotion_reason", "forced", "replaced_version"
ROLLED_BACK_AT = "rolled_back_at"
PASSED = "passed"
KIND, COLDSTART = "kind", "coldstart"  # version tag: a cold-start version (training.coldstart) ranks without training


def is_coldstart(tags: Mapping[str, str]) -> bool:
    """Whether a model version's tags mark it as a cold-start version."""
    return tags.get(KIND) == COLDSTART


def trained_champion(client, name: str) -> tuple[str | None, bool]:
    """The champion version of ``name`` (None when there is none) and whether it is a trained model (a
    cold-start version is not: FixMatch replaces it, and ``retrain.min_anomalies`` holds until then)."""
    champion = get_aliases(client, name).get(CHAMPION)
    return champion, champion is not None and not is_coldstart(client.get_model_version(name, champion).tags)


def _code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="AnomalyMatch anomaly classifier (ONNX, uint8 NHWC in, anomaly probability out)"
        )
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

    if not str(version).strip().isdigit():
        raise LookupError(
            f"{version!r} is not a version number of '{name}'; give one from `anomalymatch registry list`"
        )
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(
                f"registered model '{name}' has no version {version}; see `anomalymatch registry list`"
            ) from None
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
    return VersionInfo(
        mv.name,
        version,
        mv.run_id or "",
        mv.source or "",
        int(mv.creation_timestamp or 0),
        tuple(sorted(a for a, v in aliases.items() if v == version)),
        dict(mv.tags or {}),
    )


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


__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "PREVIOUS",
    "DEFAULT_NAME",
    "ONNX_FILE",
    "ResolvedModel",
    "VersionInfo",
    "get_aliases",
    "get_version",
    "list_versions",
    "mlflow_client",
    "resolve_model",
    "show_version",
]

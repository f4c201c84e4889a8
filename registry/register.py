"""Registering a training cycle's model: version with lineage, ONNX export, parity, gate, aliases.

The version number is reserved first (source ``runs:/<run>/registry/model``), so the exported ONNX file
can carry it in its metadata (``anomalymatch/<n>``); the onnx-flavor MLflow model is then uploaded to
that run path. Until the upload and the parity check finish the version is tagged ``parity=pending``
and cannot be promoted."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalymatch.config import RegistryConfig
from registry.gate import GateDecision, GateResult, evaluate_gate
from registry.parity import ParityResult, check_parity
from registry.promote import AliasMove, move_challenger_locked, move_champion_locked
from registry.store import (
    CHAMPION,
    GATE,
    GATE_DETAIL,
    GATE_REASON,
    GATE_VS,
    HOLDOUT_ARTIFACT,
    MODEL_ARTIFACT,
    ONNX_FILE,
    PARITY,
    PARITY_DETAIL,
    PASSED,
    TRAIN_IDS_ARTIFACT,
    ensure_registered_model,
    get_aliases,
    is_coldstart,
    mlflow_client,
    resolve_model,
)


@dataclass(frozen=True)
class ImageSet:
    """Decoded uint8 NHWC images at the model's spec, their ids and (for labelled sets) labels 1/0."""

    images: np.ndarray
    ids: np.ndarray
    y: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> ImageSet:
        return ImageSet(self.images[mask], self.ids[mask], None if self.y is None else self.y[mask])


@dataclass(frozen=True)
class Registration:
    version: str
    parity: ParityResult
    gate: GateResult
    challenger: bool  # the `challenger` alias now points here
    promotion: AliasMove | None  # set when this version became champion
    fp16: ParityResult | None = None  # the fp16 variant's check (registry.fp16), None when not made


def _labels_csv(ids: Sequence[str], y: Sequence[int]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows((str(i), "anomaly" if int(v) == 1 else "nominal") for i, v in zip(ids, y))
    return buf.getvalue().encode()


def _log_bytes(client, run_id: str, data: bytes, artifact_file: str) -> None:
    path = Path(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / path.name).write_bytes(data)
        client.log_artifact(run_id, str(Path(tmp) / path.name), artifact_path=str(path.parent))


def _trained_ids(client, run_id: str, dst: Path) -> set[str] | None:
    """The image ids a registered version was trained on (its run's train_labels.csv), None if unknown."""
    from mlflow.exceptions import MlflowException

    try:
        local = client.download_artifacts(run_id, TRAIN_IDS_ARTIFACT, str(dst))
    except (MlflowException, OSError):
        return None
    with open(local, newline="") as fh:
        return {row["filename"] for row in csv.DictReader(fh)}


def _json_safe(d: Mapping) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def gate_against_champion(
    client,
    tracking_uri: str | None,
    name: str,
    champion: str | None,
    challenger_onnx: Path,
    holdout: ImageSet,
    cfg: RegistryConfig,
    workdir: Path,
) -> GateResult:
    """Score challenger and champion (their ONNX models) on the held-out labels neither trained on."""
    from anomalymatch.scoring import OnnxScorer

    challenger = OnnxScorer(challenger_onnx, providers=["CPUExecutionProvider"])
    if champion is not None and is_coldstart(client.get_model_version(name, champion).tags):
        scores = challenger.score(holdout.images) if len(holdout.ids) else np.empty(0)
        result = evaluate_gate(holdout.y, scores, None, holdout.ids, min_anomalies=cfg.gate_min_anomalies)
        return dataclasses.replace(
            result,
            reason=f"champion {champion} is the cold-start ranking (no training): the first trained model replaces it",
            champion_version=champion,
        )
    if champion is None:
        scores = challenger.score(holdout.images) if len(holdout.ids) else np.empty(0)
        return evaluate_gate(
            holdout.y,
            scores,
            None,
            holdout.ids,
            cfg.gate_auprc_tolerance,
            cfg.gate_precision_tolerance,
            cfg.gate_min_anomalies,
        )
    champ_path = resolve_model(f"models:/{name}/{champion}", tracking_uri, cache_dir=workdir / "champion").path
    champ = OnnxScorer(champ_path, providers=["CPUExecutionProvider"])
    if champ.spec != challenger.spec:
        return GateResult(
            GateDecision.INCONCLUSIVE,
            f"champion {champion} takes other inputs "
            f"({champ.spec.to_json()}) than the challenger: compare them by hand, then --force --reason",
            champion,
        )
    trained = _trained_ids(client, client.get_model_version(name, champion).run_id, workdir / "champion_labels")
    if trained is None:
        return GateResult(
            GateDecision.INCONCLUSIVE,
            f"champion {champion} has no {TRAIN_IDS_ARTIFACT}: its training "
            "labels are unknown, so no fair held-out set exists; use --force --reason",
            champion,
        )
    keep = np.asarray([i not in trained for i in holdout.ids], dtype=bool)
    ev = holdout.subset(keep)
    if len(ev.ids) == 0:
        return evaluate_gate(
            ev.y,
            np.empty(0),
            np.empty(0),
            ev.ids,
            cfg.gate_auprc_tolerance,
            cfg.gate_precision_tolerance,
            cfg.gate_min_anomalies,
            champion,
        )
    return evaluate_gate(
        ev.y,
        challenger.score(ev.images),
        champ.score(ev.images),
        ev.ids,
        cfg.gate_auprc_tolerance,
        cfg.gate_precision_tolerance,
        cfg.gate_min_anomalies,
        champion,
        cfg.gate_confidence,
    )


def register_cycle(
    model,
    run_id: str,
    lineage: Mapping[str, object],
    pool: ImageSet,
    holdout: ImageSet,
    train: ImageSet,
    tracking_uri: str | None = None,
    name: str = "anomalymatch",
    cfg: RegistryConfig = RegistryConfig(),
    export: Callable | None = None,
) -> Registration:
    """Register ``model`` (the cycle's torch AnomalyNet) as a new version of ``name`` on run ``run_id``.

    ``lineage``: campaign, cycle, pool_sha256, config_hash, parent_version, metrics (label hashes and
    counts are computed here from ``train`` and ``holdout``). ``pool``: real images for the parity check
    (a deterministic sample of ``cfg.parity_sample``). ``holdout``: labelled images not trained on, for
    the gate. ``train``: the labelled ids it was trained on (images not needed). ``export`` replaces
    ``registry.onnx_export.export_onnx`` (tests use it to break the export on purpose).
    Sets ``challenger`` when parity passes and, with ``cfg.auto_promote``, promotes when the gate passes."""
    import mlflow.onnx
    import onnx
    import torch

    from anomalymatch.labels import LabelTable
    from registry.lock import hold_promotion_lock
    from registry.onnx_export import export_onnx

    export = export or export_onnx
    client = mlflow_client(tracking_uri)
    ensure_registered_model(client, name)
    champion = get_aliases(client, name).get(CHAMPION)
    train_table = LabelTable.from_pairs(zip(map(str, train.ids), ("anomaly" if v else "nominal" for v in train.y)))
    hold_table = LabelTable.from_pairs(zip(map(str, holdout.ids), ("anomaly" if v else "nominal" for v in holdout.y)))
    tags = {k: v for k, v in lineage.items() if k != "metrics"}
    tags.update(
        labels_sha256=train_table.sha256(),
        n_labels=len(train_table),
        n_anomalies=train_table.n_anomalies,
        holdout_sha256=hold_table.sha256(),
        n_holdout=len(hold_table),
    )
    tags["metrics"] = json.dumps(_json_safe(dict(lineage.get("metrics", {}))), sort_keys=True)
    tags = {k: str(v) for k, v in tags.items()}
    tags.update({PARITY: "pending", GATE: "pending"})
    description = f"campaign {lineage.get('campaign', '')} cycle {lineage.get('cycle', '')}"
    mv = client.create_model_version(
        name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id, tags=tags, description=description
    )
    version = str(mv.version)

    try:
        _log_bytes(client, run_id, _labels_csv(train.ids, train.y), TRAIN_IDS_ARTIFACT)
        _log_bytes(client, run_id, _labels_csv(holdout.ids, holdout.y), HOLDOUT_ARTIFACT)
        cpu_model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            onnx_path = Path(export(cpu_model, tmp / "export" / ONNX_FILE, model_version=f"{name}/{version}"))
            sample = pool.subset(_parity_sample(pool.ids, cfg.parity_sample))
            parity = check_parity(
                cpu_model, onnx_path, sample.images, sample.ids, cfg.parity_tolerance, cfg.parity_top_k
            )
            mlflow.onnx.save_model(
                onnx.load(str(onnx_path)),
                str(tmp / "model"),
                pip_requirements=_requirements(),
                save_as_external_data=False,
            )  # one self-contained model.onnx
            client.log_artifacts(run_id, str(tmp / "model"), MODEL_ARTIFACT)
            fp16 = None
            if cfg.fp16 and parity.passed:
                fp16 = _fp16_variant(client, name, version, run_id, cpu_model, onnx_path, sample, tmp)
            client.set_model_version_tag(name, version, PARITY_DETAIL, parity.reason)
            client.set_model_version_tag(name, version, PARITY, PASSED if parity.passed else "failed")
            if parity.passed:
                gate = gate_against_champion(client, tracking_uri, name, champion, onnx_path, holdout, cfg, tmp)
            else:
                gate = GateResult(
                    GateDecision.INCONCLUSIVE, "not evaluated: the ONNX export failed parity", champion or ""
                )
        for key, value in {
            GATE_VS: gate.champion_version,
            GATE_REASON: gate.reason,
            GATE_DETAIL: json.dumps(_json_safe_nested(gate.to_dict()), sort_keys=True),
            GATE: gate.decision.value,
        }.items():
            client.set_model_version_tag(name, version, key, value)
    except BaseException as exc:
        # a version whose registration broke off stays visible but can never be promoted
        client.set_model_version_tag(name, version, PARITY_DETAIL, f"registration aborted: {exc!r}"[:4000])
        client.set_model_version_tag(name, version, PARITY, "failed")
        raise

    is_challenger, promotion = False, None
    if parity.passed:
        with hold_promotion_lock(client, name, cfg.lock_timeout):
            is_challenger = move_challenger_locked(client, name, version)
            still = get_aliases(client, name).get(CHAMPION)
            if cfg.auto_promote and gate.passed and still == champion:
                promotion = move_champion_locked(
                    client, name, version, f"gate {gate.decision.value}: {gate.reason}", forced=False
                )
            elif cfg.auto_promote and gate.passed:
                client.set_model_version_tag(
                    name, version, GATE_REASON, f"{gate.reason} (champion changed to {still} meanwhile: not promoted)"
                )
    return Registration(version, parity, gate, is_challenger, promotion, fp16)


def _fp16_variant(client, name, version, run_id, model, onnx_path: Path, sample: ImageSet, tmp: Path) -> ParityResult:  # type: ignore[no-untyped-def]
    """The fp16 variant (``registry.fp16``): an export or scoring error fails the variant, not the version."""
    from registry.fp16 import FP16_PARITY, FP16_PARITY_DETAIL, register_fp16_variant

    try:
        return register_fp16_variant(client, name, version, run_id, model, onnx_path, sample.images, sample.ids, tmp)
    except Exception as exc:  # also MlflowException: the fp32 version stands whatever befalls its fp16 twin
        reason = f"fp16 export or scoring failed, fp32 only: {type(exc).__name__}: {exc}"[:4000]
        client.set_model_version_tag(name, version, FP16_PARITY_DETAIL, reason)
        client.set_model_version_tag(name, version, FP16_PARITY, "failed")
        return ParityResult(False, float("inf"), len(sample.ids), 0, False, 0.0, reason)


def _json_safe_nested(d: dict) -> dict:
    return {k: _json_safe(v) if isinstance(v, dict) else v for k, v in _json_safe(d).items()}


def _parity_sample(ids: np.ndarray, n: int) -> np.ndarray:
    """A deterministic sample of ``n`` pool images (by id hash); all when ``n`` is 0 or the pool is small."""
    from registry.holdout import holdout_position

    mask = np.ones(len(ids), dtype=bool)
    if n and len(ids) > n:
        positions = np.fromiter((holdout_position("parity:" + str(i)) for i in ids), dtype=np.float64, count=len(ids))
        mask[:] = False
        mask[np.argsort(positions, kind="stable")[:n]] = True
    return mask


def _requirements() -> list[str]:
    """Pinned serving requirements of the logged model (skips MLflow's slow requirement inference)."""
    import onnx
    import onnxruntime

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]


def describe_registration(name: str, reg: Registration) -> str:
    """One line for the training and demo output."""
    if reg.promotion is not None and reg.promotion.changed:
        outcome = f"promoted to champion (previous: {reg.promotion.previous or '-'})"
    elif not reg.parity.passed:
        outcome = "NOT promotable (parity failed)"
    else:
        outcome = "not promoted" + (" (challenger)" if reg.challenger else "")
    return (
        f"{name} version {reg.version}: parity {'passed' if reg.parity.passed else 'FAILED'} "
        f"({reg.parity.reason}); gate {reg.gate.decision.value} ({reg.gate.reason}); {outcome}"
    )

"""Which file of a resolved model to score with: the fp32 ONNX model, or its fp16 variant.

``serving.precision``: "fp32" (default) always the fp32 file; "fp16" the fp16 variant when the version
has one that passed its parity check against fp32 (``registry.fp16``); "auto" the fp16 variant only where
scoring runs on ONNX Runtime's CUDA provider (on a CPU fp16 is slower than fp32: most fp16 ops run through
inserted casts). Every fallback to fp32 says why, in the log and in ``PrecisionChoice.reason``. Torch-free;
mlflow is imported only to read a registered version's tags and download its fp16 file."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from anomalymatch.model_ref import ResolvedModel, mlflow_client

log = logging.getLogger(__name__)

FP16_ARTIFACT = "registry/model_fp16"  # on the version's run (registry.fp16 logs it there)
FP16_PARITY, FP16_PARITY_DETAIL = "fp16_parity", "fp16_parity_detail"  # version tags
CUDA = "CUDAExecutionProvider"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    AUTO = "auto"


@dataclass(frozen=True)
class PrecisionChoice:
    path: Path
    precision: str  # "fp32" or "fp16": what ``path`` is
    reason: str


def scoring_providers(configured: Sequence[str] = ()) -> list[str]:
    """The providers an ``OnnxScorer`` with ``configured`` (empty = CUDA then CPU) would get here."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = list(configured) or [CUDA, "CPUExecutionProvider"]
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def choose_precision(
    model: ResolvedModel,
    requested: str,
    providers: Sequence[str],
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PrecisionChoice:
    """The file to score ``model`` with for ``requested`` ("fp32" | "fp16" | "auto") on ``providers``
    (the ONNX Runtime providers scoring will use, e.g. from ``scoring_providers``)."""
    try:
        wanted = Precision(requested)
    except ValueError:
        raise ValueError(f"serving.precision must be one of fp32, fp16, auto; got {requested!r}") from None
    fp32 = PrecisionChoice(model.path, "fp32", "")
    if wanted is Precision.FP32:
        return PrecisionChoice(model.path, "fp32", "fp32 asked for")
    if wanted is Precision.AUTO and CUDA not in providers:
        return _fallback(fp32, f"auto: fp16 only on the CUDA provider; scoring here runs on {', '.join(providers)}")
    if model.ref.path or not model.version:
        return _fallback(
            fp32,
            f"{model.ref.text} is a local file: it carries no fp16 parity record (give the fp16 file itself as "
            "the model, or a registered version)",
        )
    try:
        return _registered_fp16(model, tracking_uri, cache_dir, wanted, fp32)
    except Exception as exc:  # MlflowException, OSError: the registry or its artifacts are unreachable
        return _fallback(
            fp32, f"the fp16 variant of version {model.version} is unavailable ({type(exc).__name__}: {exc})"
        )


def _registered_fp16(model, tracking_uri, cache_dir, wanted, fp32):  # type: ignore[no-untyped-def]
    client = mlflow_client(tracking_uri)
    mv = client.get_model_version(model.ref.name, model.version)
    verdict = mv.tags.get(FP16_PARITY)
    if verdict != "passed":
        why = "has no fp16 variant (registered without registry.fp16)" if verdict is None else "failed fp16 parity"
        detail = mv.tags.get(FP16_PARITY_DETAIL, "")
        return _fallback(fp32, f"version {model.version} {why}" + (f": {detail}" if detail else ""))
    target = _fp16_dir(model, cache_dir)
    onnx_file = target / "model_fp16" / "model.onnx"
    if not onnx_file.is_file():
        target.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(mv.run_id, FP16_ARTIFACT, str(target))
    if not onnx_file.is_file():
        return _fallback(fp32, f"version {model.version} passed fp16 parity but its run has no {FP16_ARTIFACT}")
    reason = f"fp16 variant of version {model.version} ({'auto on CUDA' if wanted is Precision.AUTO else 'asked'})"
    log.info("scoring with %s", reason)
    return PrecisionChoice(onnx_file, "fp16", reason)


def _fp16_dir(model: ResolvedModel, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir) / model.ref.name / f"{model.version}-fp16"
    return model.path.parent / "fp16"


def _fallback(fp32: PrecisionChoice, reason: str) -> PrecisionChoice:
    log.warning("scoring in fp32: %s", reason)
    return PrecisionChoice(fp32.path, "fp32", reason)

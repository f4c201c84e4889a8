"""The fp16 variant of a registered version: exported beside the fp32 model, allowed only if it scores
like the fp32 ONNX file on real pool images.

The check: max |p_fp32 - p_fp16| <= ``FP16_TOLERANCE`` (1e-3) and the same top-100 (scores closer than
the tolerance count as ties), on the registration's parity sample (up to 1,000 pool images), plus a
min cosine of ``FP16_EMBEDDING_MIN_COSINE`` between the two files' embeddings (bulk jobs store features
as float16 anyway). Both files run in ONNX Runtime on the CPU, where fp16 ops without a CPU kernel run
through casts ONNX Runtime inserts: slower, the same arithmetic per op. The variant is logged as
``registry/model_fp16/model.onnx`` on the version's run only when it passes; the version's tags
``fp16_parity`` (passed/failed) and ``fp16_parity_detail`` record the verdict either way. Opt-in
(``registry.fp16``): the export and the second scoring pass cost about as much as the fp32 ones."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalymatch.precision import FP16_ARTIFACT, FP16_PARITY, FP16_PARITY_DETAIL
from registry.parity import ParityResult, compare_scores, spec_mismatch, with_embedding_parity

FP16_TOLERANCE = 1e-3
FP16_TOP_K = 100
FP16_EMBEDDING_MIN_COSINE = 0.999


def check_fp16_parity(
    fp32_path: str | os.PathLike,
    fp16_path: str | os.PathLike,
    images: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    tolerance: float = FP16_TOLERANCE,
    top_k: int = FP16_TOP_K,
) -> ParityResult:
    """Score ``images`` with both ONNX files (ONNX Runtime, CPU) and compare (see the module docstring)."""
    from anomalymatch.scoring import OnnxScorer

    if len(images) == 0:
        raise ValueError("check_fp16_parity needs at least one real image")
    ref = OnnxScorer(fp32_path, providers=["CPUExecutionProvider"])
    half = OnnxScorer(fp16_path, providers=["CPUExecutionProvider"])
    if half.spec != ref.spec:
        return spec_mismatch(
            len(images),
            top_k,
            tolerance,
            f"the fp16 file's preprocessing spec {half.spec.to_json()} differs from the fp32 file's "
            f"{ref.spec.to_json()}: export both from the same model",
        )
    names = ("fp32", "fp16")
    if ref.embedding_output is None or half.embedding_output is None:
        return compare_scores(ref.score(images), half.score(images), ids, tolerance, top_k, names)
    p_ref, f_ref = ref.score_and_embed(images)
    p_half, f_half = half.score_and_embed(images)
    result = compare_scores(p_ref, p_half, ids, tolerance, top_k, names)
    return with_embedding_parity(result, f_ref, f_half, FP16_EMBEDDING_MIN_COSINE)


def register_fp16_variant(
    client,
    name: str,
    version: str,
    run_id: str,
    model,
    fp32_path: Path,
    images: np.ndarray,
    ids: np.ndarray,
    workdir: Path,
    export=None,
) -> ParityResult:
    """Export ``model`` in fp16, check it against ``fp32_path``, tag the version, log the file if it passed.
    ``export`` replaces ``export_onnx`` (tests break the variant on purpose)."""
    from registry.onnx_export import export_onnx

    export = export or export_onnx
    path = Path(export(model, workdir / "fp16" / "model.onnx", model_version=f"{name}/{version}", precision="fp16"))
    parity = check_fp16_parity(fp32_path, path, images, ids)
    if parity.passed:
        client.log_artifact(run_id, str(path), artifact_path=FP16_ARTIFACT)
    client.set_model_version_tag(name, version, FP16_PARITY_DETAIL, parity.reason[:4000])
    client.set_model_version_tag(name, version, FP16_PARITY, "passed" if parity.passed else "failed")
    return parity

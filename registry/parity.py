"""Torch vs ONNX Runtime parity on real images: the exported graph must score like the trained model.

Checked for every registered version: max |p_torch - p_onnx| <= tolerance and the same top-k ranking
(scores closer than the tolerance count as ties), and for the ``embedding`` output a cosine similarity of
at least ``EMBEDDING_MIN_COSINE`` between the torch and ONNX feature vectors of every image. A version
that fails is tagged and never promoted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from anomalymatch.metrics import rank_order

EMBEDDING_MIN_COSINE = 0.9999


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    max_abs_diff: float
    n_images: int
    top_k: int
    top_k_identical: bool  # the top-k id sequences are exactly equal
    tolerance: float
    reason: str
    embedding_min_cosine: float | None = None  # None: the ONNX file has no embedding output

    def to_dict(self) -> dict:
        return asdict(self)


def score_torch(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Anomaly probabilities of a torch AnomalyNet on uint8 NHWC images, on the CPU in float32."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
                out.append(model.anomaly_probability(x).float().numpy())  # over the spec's test-time views
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def embed_torch(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The pooled features of a torch AnomalyNet on uint8 NHWC images (on the model's device), float32."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
                out.append(model.embed(x.to(device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine similarity of two (N, D) arrays (1 for two zero rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)
    cos[both_zero] = 1.0
    return float(cos.min()) if len(cos) else float("nan")


def compare_scores(
    p_torch: np.ndarray,
    p_onnx: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    tolerance: float = 1e-4,
    top_k: int = 100,
    names: tuple[str, str] = ("torch", "onnx"),
) -> ParityResult:
    """The parity verdict from two score vectors over the same images: the reference's (``p_torch``) and the
    candidate's; ``names`` label them in the reason."""
    ref, cand = names
    diff = f"max |p_{ref} - p_{cand}|"
    p_torch = np.asarray(p_torch, dtype=np.float64)
    p_onnx = np.asarray(p_onnx, dtype=np.float64)
    if p_torch.shape != p_onnx.shape or p_torch.ndim != 1 or len(p_torch) == 0:
        return ParityResult(
            False,
            float("inf"),
            len(p_torch),
            top_k,
            False,
            tolerance,
            f"score shapes differ or are empty: {ref} {p_torch.shape}, {cand} {p_onnx.shape}",
        )
    ids = np.asarray(ids, dtype=object)
    if not (np.isfinite(p_onnx).all() and np.isfinite(p_torch).all()):
        n_bad = int((~np.isfinite(p_onnx)).sum() + (~np.isfinite(p_torch)).sum())
        return ParityResult(
            False,
            float("inf"),
            len(ids),
            min(top_k, len(ids)),
            False,
            tolerance,
            f"{n_bad} non-finite score(s) (NaN or inf)",
        )
    max_diff = float(np.max(np.abs(p_torch - p_onnx)))
    k = min(top_k, len(ids))
    top_t = rank_order(p_torch, ids)[:k]
    top_o = rank_order(p_onnx, ids)[:k]
    identical = bool(np.array_equal(top_t, top_o))
    # positions where the rankings differ must hold images the torch model scores as tied
    swapped = np.abs(p_torch[top_t] - p_torch[top_o]) > tolerance
    problems = []
    if max_diff > tolerance:
        problems.append(f"{diff} = {max_diff:.3g} > {tolerance:g}")
    if swapped.any():
        problems.append(
            f"top-{k} ranking differs at {int(swapped.sum())} position(s), first at rank {int(np.argmax(swapped)) + 1}"
        )
    reason = "; ".join(problems) or f"{diff} = {max_diff:.3g} on {len(ids)} images, same top-{k}"
    return ParityResult(not problems, max_diff, len(ids), k, identical, tolerance, reason)


def check_parity(
    model,
    onnx_path: str | os.PathLike,
    images: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    tolerance: float = 1e-4,
    top_k: int = 100,
) -> ParityResult:
    """Score ``images`` with the torch ``model`` and with the ONNX file in ONNX Runtime (CPU) and compare."""
    from anomalymatch.scoring import OnnxScorer

    if len(images) == 0:
        raise ValueError("check_parity needs at least one real image")
    scorer = OnnxScorer(onnx_path, providers=["CPUExecutionProvider"])
    if scorer.spec != model.spec:
        return spec_mismatch(
            len(images),
            top_k,
            tolerance,
            f"preprocessing spec in the ONNX metadata {scorer.spec.to_json()} differs from the "
            f"model's {model.spec.to_json()}",
        )
    if scorer.embedding_output is None:
        return compare_scores(score_torch(model, images), scorer.score(images), ids, tolerance, top_k)
    scores, features = scorer.score_and_embed(images)
    result = compare_scores(score_torch(model, images), scores, ids, tolerance, top_k)
    return with_embedding_parity(result, embed_torch(model, images), features, EMBEDDING_MIN_COSINE)


def spec_mismatch(n_images: int, top_k: int, tolerance: float, reason: str) -> ParityResult:
    """The failed verdict for two models that do not take the same inputs (nothing is scored)."""
    return ParityResult(False, float("inf"), n_images, top_k, False, tolerance, reason)


def with_embedding_parity(
    result: ParityResult, reference: np.ndarray, features: np.ndarray, min_allowed: float
) -> ParityResult:
    """``result`` with the embeddings' smallest cosine similarity, failed when it is below ``min_allowed``."""
    cosine = min_cosine(reference, features)
    if not cosine >= min_allowed:  # also NaN
        return replace(
            result,
            passed=False,
            embedding_min_cosine=cosine,
            reason=f"{result.reason}; embeddings differ: min cosine {cosine:.6f} < {min_allowed}",
        )
    return replace(result, embedding_min_cosine=cosine)

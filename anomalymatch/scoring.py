"""Scoring uint8 images with an exported ONNX model in ONNX Runtime: the one scorer used by
training (pool scoring), the registry (parity checks) and serving. No torch here."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalymatch.preprocessing import PreprocessSpec

SPEC_KEY = "anomalymatch.preprocess_spec"
VERSION_KEY = "anomalymatch.model_version"
PRECISION_KEY = "anomalymatch.precision"  # "fp32" or "fp16" (the half-precision variant); absent = fp32
EMBEDDING_OUTPUT = "embedding"  # the pooled-features output of models exported with embeddings


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "ONNX Runtime is needed for scoring: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from exc
    return onnxruntime


class OnnxScorer:
    """An ONNX Runtime session over an AnomalyMatch model: ``score(uint8 NHWC) -> probabilities``.

    ``providers`` defaults to CUDA then CPU, whichever this onnxruntime build offers;
    ``self.providers`` reports the ones actually in use (ONNX Runtime falls back silently).
    ``spinning=False`` stops ONNX Runtime's threads from spin-waiting between runs: right where decode
    threads share the CPU (bulk jobs and the service: a 64 px bulk job on 2 cores ran 10-14% faster),
    wrong for back-to-back inference on arrays in memory.

    ``io_binding`` runs through ONNX Runtime's I/O binding (``anomalymatch.io_binding``): one reused,
    pinned host input buffer, outputs bound on the device and copied once per batch. None (default) = on
    for the CUDA provider, off on the CPU, where it gives the same scores as the plain path."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        spinning: bool = True,
        io_binding: bool | None = None,
    ) -> None:
        ort = _onnxruntime()
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        available = ort.get_available_providers()
        wanted = list(providers) if providers else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=chosen)
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise ValueError(f"{path} has no {SPEC_KEY} metadata: export it with registry.export_onnx")
        self.spec = PreprocessSpec.from_json(meta[SPEC_KEY])
        self.model_version = meta.get(VERSION_KEY, "")
        self.precision = meta.get(PRECISION_KEY, "fp32")
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.score_output = outputs[0]
        self.embedding_output = EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in outputs else None
        on_cuda = "CUDAExecutionProvider" in self.providers
        self.io_binding = on_cuda if io_binding is None else bool(io_binding)
        self._bound_device = "cuda" if on_cuda else "cpu"
        self._runner = None  # an io_binding.BoundRunner, made at the first batch
        self._runner_lock = threading.Lock()

    @property
    def input_memory(self) -> str:
        """Where batches are staged: "session.run" (no I/O binding), else the bound buffer's kind."""
        if not self.io_binding:
            return "session.run"
        return self._runner.input_memory if self._runner is not None else "not allocated yet"

    @property
    def default_batch_size(self) -> int:
        """Small batches stay in the CPU caches (64 beats 256 by about 10% at 64x64); GPUs want big ones."""
        return 256 if "CUDAExecutionProvider" in self.providers else 64

    def score(self, images: np.ndarray, batch_size: int = 0) -> np.ndarray:
        """Anomaly probabilities for uint8 images of shape (N, size, size, 3); ``batch_size`` 0 = auto."""
        return self._run(images, batch_size, [self.score_output])[0]

    def embed(self, images: np.ndarray, batch_size: int = 0) -> np.ndarray:
        """The pooled features (N, D) float32 the classifier reads, for similarity search."""
        return self.score_and_embed(images, batch_size)[1]

    def score_and_embed(self, images: np.ndarray, batch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N,), features (N, D)) in one pass."""
        if self.embedding_output is None:
            raise ValueError(
                f"this model (version {self.model_version or 'unknown'}) has no {EMBEDDING_OUTPUT!r} output: "
                "it was exported before embeddings were; a retrain registers a version that has it"
            )
        scores, features = self._run(images, batch_size, [self.score_output, self.embedding_output])
        return scores, features

    def _run(self, images: np.ndarray, batch_size: int, outputs: list[str]) -> list[np.ndarray]:
        batch_size = batch_size or self.default_batch_size
        size = self.spec.size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected uint8 images of shape (N, {size}, {size}, 3), got {images.dtype} "
                f"{images.shape}; decode with anomalymatch.sources at this model's spec"
            )
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            for part, value in zip(parts, self._run_batch(batch, batch_size, outputs)):
                part.append(value)
        return [np.concatenate(p).astype(np.float32, copy=False) if p else np.empty((0,), np.float32) for p in parts]

    def _run_batch(self, batch: np.ndarray, capacity: int, outputs: list[str]) -> list[np.ndarray]:
        if not self.io_binding:
            return self.session.run(outputs, {self.input_name: np.ascontiguousarray(batch)})
        from anomalymatch.io_binding import BoundRunner

        with self._runner_lock:  # one reused input buffer: one batch at a time
            if self._runner is None or self._runner.capacity < len(batch):
                if self._runner is not None:
                    self._runner.close()
                shape = (self.spec.size, self.spec.size, 3)
                self._runner = BoundRunner(self.session, self.input_name, capacity, shape, self._bound_device)
            return self._runner.run(batch, outputs)

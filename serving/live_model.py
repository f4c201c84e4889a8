"""The served model: an ``OnnxScorer`` for a model reference, swapped atomically when the alias moves.

``LiveModel.current`` is one immutable ``LoadedModel`` (scorer + version). A request reads it once and
uses that object to the end, so a reload never changes the model under a request in flight: the old
scorer stays alive until its last request finishes. The poller checks the alias every
``reload_interval_s`` seconds, loads and warms the new version off the request path, then swaps.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalymatch.model_ref import ModelRef, ResolvedModel, current_version, parse_model_ref, resolve_model
from anomalymatch.precision import choose_precision, scoring_providers
from anomalymatch.scoring import OnnxScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    scorer: OnnxScorer
    version: str
    path: Path
    precision: str = "fp32"
    precision_reason: str = ""

    def info(self) -> dict:
        spec = self.scorer.spec
        return {
            "model_version": self.version,
            "providers": list(self.scorer.providers),
            "input": {
                "name": self.scorer.input_name,
                "dtype": "uint8",
                "shape": ["batch", spec.size, spec.size, 3],
                "layout": "NHWC",
            },
            "preprocess": spec.to_dict(),
            "path": str(self.path),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
        }


def load_scorer(path: str | os.PathLike, version: str, providers: Sequence[str] = (), threads: int = 0) -> LoadedModel:
    """Load and warm up (one batch of zeros) an ONNX model; it runs beside upload decoding, so its threads
    do not spin-wait."""
    scorer = OnnxScorer(path, providers=providers or None, threads=threads, spinning=False)
    size = scorer.spec.size
    scorer.score(np.zeros((1, size, size, 3), np.uint8))
    return LoadedModel(scorer, version or served_name(path), Path(path))


def served_name(path: str | os.PathLike) -> str:
    """What to call a model served from a plain file that carries no registry version: its file name."""
    return f"file:{Path(path).name}"


class LiveModel:
    """The current model for ``ref``, reloaded in the background when the alias points elsewhere."""

    def __init__(
        self,
        ref: str | ModelRef,
        tracking_uri: str | None,
        cache_dir: str | os.PathLike,
        registered_model: str = "anomalymatch",
        reload_interval_s: float = 30.0,
        providers: Sequence[str] = (),
        threads: int = 0,
        precision: str = "fp32",
    ) -> None:
        self.precision = precision  # serving.precision: fp32 | fp16 | auto (anomalymatch.precision)
        self.ref = parse_model_ref(ref, registered_model) if isinstance(ref, str) else ref
        self.tracking_uri, self.cache_dir = tracking_uri, Path(cache_dir)
        self.providers, self.threads = tuple(providers), threads
        self.reload_interval_s = reload_interval_s
        self.reload_error = ""
        resolved = resolve_model(self.ref, tracking_uri, self.cache_dir)
        self.current = self._load(resolved)
        log.info(
            "serving model %s version %s (%s) on %s",
            self.ref.text,
            self.current.version,
            self.current.precision,
            self.current.scorer.providers,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.ref.is_alias and reload_interval_s > 0:
            self._thread = threading.Thread(target=self._poll, name="anomalymatch-reload", daemon=True)
            self._thread.start()

    def reload_if_moved(self) -> bool:
        """Load the version the alias points at now, if it is another one; True when it swapped."""
        version = current_version(self.ref, self.tracking_uri)
        if version == self.current.version:
            return False
        resolved = resolve_model(
            ModelRef(self.ref.text, name=self.ref.name, version=version), self.tracking_uri, self.cache_dir
        )
        loaded = self._load(resolved)
        previous, self.current = self.current, loaded  # one attribute store: atomic for readers
        log.info("alias %s moved: now serving version %s (was %s)", self.ref.text, version, previous.version)
        return True

    def _load(self, resolved: ResolvedModel) -> LoadedModel:
        choice = choose_precision(
            resolved, self.precision, scoring_providers(self.providers), self.tracking_uri, self.cache_dir
        )
        loaded = load_scorer(choice.path, resolved.version, self.providers, self.threads)
        return LoadedModel(loaded.scorer, loaded.version, loaded.path, choice.precision, choice.reason)

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.reload_if_moved()
                self.reload_error = ""
            except Exception as exc:  # keep serving the current version; report why in /info
                self.reload_error = f"{type(exc).__name__}: {exc}"
                log.warning("model reload failed, still serving version %s: %s", self.current.version, exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

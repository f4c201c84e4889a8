"""Cold start: a campaign's first ranking, before any anomaly is labelled.

With no labelled anomaly there is nothing to train on, so the first model is the ImageNet backbone with a
head that needs no labels. It ranks by **outlierness** (one minus the mean cosine similarity to the ``k``
nearest images of a reference sample of the campaign's pool: ``embedding_scores.outlier_scores``) or, when
the user gives example images of what they look for, by **similarity** to the closest example
(``embedding_scores.example_similarity``). The head lives inside the model (``ColdStartHead``: the reference
sample or the examples are buffers), so the exported ONNX file computes the same score: the service, bulk
jobs and the web app's queue need nothing new, and uploads are scored like the pool.

``run_coldstart`` embeds the campaign's pool sample once, builds that model, registers it as a version tagged
``kind=coldstart`` (parity-checked like any other; promoted only when there is no champion yet), stores the
pool's scores in the label store and its embeddings for "more like this". The expert labels from that
queue; once ``retrain.min_anomalies`` anomalies are labelled the retrain watcher trains FixMatch from the
ImageNet weights, and that first trained version replaces the cold-start champion without a gate contest
(``registry.register``): the cold-start ranking is a placeholder, not a model to defend.

The score is ``sigmoid(scale * (raw - centre))`` with the centre at the pool's 99th percentile of the raw
score and the scale putting the median at 0.1: 0.5 means "as unusual as the pool's top 1%".
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anomalymatch.embedding_scores import SELF_MATCH, example_similarity, l2_normalise, outlier_scores
from registry.store import COLDSTART, KIND

log = logging.getLogger(__name__)
OUTLIER, EXAMPLES = "outlier", "examples"


class ColdStartHead(nn.Module):
    """Pooled features -> two logits whose softmax[:, 1] is the cold-start score (a drop-in classifier)."""

    def __init__(self, bank: np.ndarray, mode: str, k: int, centre: float, scale: float) -> None:
        super().__init__()
        if mode not in (OUTLIER, EXAMPLES):
            raise ValueError(f"cold-start mode must be {OUTLIER!r} or {EXAMPLES!r}, got {mode!r}")
        self.mode, self.k = mode, int(k)
        self.register_buffer("bank", torch.from_numpy(l2_normalise(bank)))
        self.register_buffer("centre", torch.tensor(float(centre)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def raw(self, pooled: torch.Tensor) -> torch.Tensor:
        """Outlierness or best example similarity, (N,): the torch twin of the numpy functions."""
        sim = nn.functional.normalize(pooled.float(), dim=1, eps=1e-12) @ self.bank.T
        if self.mode == EXAMPLES:
            return sim.max(dim=1).values
        sim = torch.where(sim > SELF_MATCH, torch.full_like(sim, -1.0), sim)
        return 1.0 - sim.topk(self.k, dim=1).values.mean(dim=1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        z = (self.raw(pooled) - self.centre) * self.scale
        return torch.stack([torch.zeros_like(z), z], dim=1)


def calibrate(raw: np.ndarray) -> tuple[float, float]:
    """(centre, scale) putting the 99th percentile of ``raw`` at 0.5 and the median at 0.1."""
    q50, q99 = np.quantile(np.asarray(raw, dtype=np.float64), [0.5, 0.99])
    return float(q99), math.log(9.0) / max(float(q99 - q50), 1e-6)


def build_head(
    pool: np.ndarray, examples: np.ndarray | None = None, k: int = 10, reference: int = 2048, seed: int = 0
) -> ColdStartHead:
    """The head for pool embeddings ``pool``: by similarity to ``examples`` when given, else outlierness
    against a seeded sample of ``reference`` pool rows."""
    if examples is not None and len(examples):
        mode, bank = EXAMPLES, np.asarray(examples, dtype=np.float32)
        raw = example_similarity(pool, bank)
    else:
        mode = OUTLIER
        if len(pool) <= k:
            raise ValueError(f"cold start needs more than k={k} pool images to rank by outlierness, got {len(pool)}")
        rows = np.random.default_rng(seed).choice(len(pool), size=min(reference, len(pool)), replace=False)
        bank = np.asarray(pool, dtype=np.float32)[np.sort(rows)]
        raw = outlier_scores(pool, bank, k)
    centre, scale = calibrate(raw)
    return ColdStartHead(bank, mode, k, centre, scale)


def head_scores(head: ColdStartHead, embeddings: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The score the exported model gives images with these pooled features."""
    out = []
    with torch.no_grad():
        for start in range(0, len(embeddings), batch):
            logits = head(torch.from_numpy(np.asarray(embeddings[start : start + batch], dtype=np.float32)))
            out.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


@dataclass(frozen=True)
class ColdStartOutcome:
    version: str
    mode: str
    n_pool: int
    promoted: bool
    reason: str
    run_id: str


def _embedder(spec, pretrained: bool, tmp: Path):
    """The ImageNet model and an ONNX Runtime session of it (faster than eager torch on a CPU)."""
    from anomalymatch.scoring import OnnxScorer
    from registry.onnx_export import export_onnx
    from training.model import create_model

    model = create_model(spec, pretrained=pretrained).eval()
    return model, OnnxScorer(export_onnx(model, tmp / "pretrained.onnx"), providers=["CPUExecutionProvider"])


def run_coldstart(config, store, examples: list[str] | None = None, progress: bool = False) -> ColdStartOutcome:
    """Embed the campaign's pool sample with the ImageNet model, register the cold-start model, store its
    scores and embeddings; promoted to champion only when the champion is not a trained model (none yet,
    or an earlier cold start)."""
    import tempfile

    from anomalymatch.campaign_images import campaign_images
    from anomalymatch.embeddings import EmbeddingSet, embeddings_path
    from anomalymatch.errors import TrainingInputError
    from anomalymatch.labels import Label
    from anomalymatch.loader import load_images
    from anomalymatch.sources import open_sources
    from registry.register import ImageSet, register_cycle
    from registry.store import mlflow_client, trained_champion
    from training.inputs import sample_pool
    from training.tracking import RunTracker, sha256_bytes

    cfg = config
    campaign = campaign_images(store, cfg.retrain.campaign)
    spec = campaign.preprocess or cfg.preprocess
    current = store.current_labels(with_extra=False)
    with tempfile.TemporaryDirectory(prefix="anomalymatch-coldstart-") as tmp:
        model, scorer = _embedder(spec, cfg.retrain.pretrained, Path(tmp))
        with campaign.open() as source:
            in_campaign = set(source.ids)
            labelled = [i for i in current.ids if i in in_campaign]
            taken = set(labelled)
            pool_ids = sample_pool([i for i in source.ids if i not in taken], cfg.cycle.pool_sample, 0)
            pool = load_images(source, spec, ids=pool_ids, workers=cfg.workers, progress=progress)
            held = load_images(source, spec, ids=labelled, workers=cfg.workers, progress=progress)
        if len(pool.ids) == 0:
            raise TrainingInputError(f"campaign {campaign.name} has no unlabelled image that decodes: nothing to rank")
        pool_emb = scorer.embed(pool.images)
        example_emb = None
        if examples:
            with open_sources(examples) as ex_source:
                ex = load_images(ex_source, spec, workers=cfg.workers)
            if len(ex.ids) == 0:
                raise TrainingInputError(
                    f"none of the example images in {examples} could be decoded: {ex.report.summary()}"
                )
            example_emb = scorer.embed(ex.images)
        held_emb = scorer.embed(held.images) if len(held.ids) else np.empty((0, pool_emb.shape[1]), np.float32)
    head = build_head(pool_emb, example_emb, k=cfg.coldstart.k, reference=cfg.coldstart.reference, seed=cfg.cycle.seed)
    model.backbone.classifier = head
    scores = head_scores(head, pool_emb)

    label_of = current.as_dict()
    held_y = np.asarray([1 if label_of[i] is Label.ANOMALY else 0 for i in held.ids], dtype=np.int64)
    pool_ids_arr = np.asarray(pool.ids, dtype=object)
    tracker = RunTracker(cfg.tracking, cfg.data_path)
    client = mlflow_client(tracker.tracking_uri)
    champion, trained = trained_champion(client, cfg.tracking.registered_model)
    replaceable = not trained
    registry_cfg = dataclasses.replace(cfg.registry, auto_promote=cfg.registry.auto_promote and replaceable)
    tags = {"anomalymatch.kind": COLDSTART, "anomalymatch.coldstart_mode": head.mode}
    params = {"coldstart.mode": head.mode, "coldstart.n_examples": len(example_emb) if example_emb is not None else 0}
    with tracker.parent_run(f"coldstart-{campaign.name}", {**cfg.to_dict(), **params}, tags) as run_id:
        if examples:
            tracker.log_lines(run_id, [str(e) for e in examples], "coldstart/examples.txt")
        tracker.log_metrics(run_id, {"pool_score_median": float(np.median(scores)), "n_pool": len(scores)})
        lineage = {
            "campaign": campaign.name,
            "campaign_run_id": run_id,
            "cycle": 0,
            KIND: COLDSTART,
            "pool_sha256": sha256_bytes("\n".join(map(str, pool.ids)).encode()),
            "n_pool": len(pool.ids),
            "config_hash": cfg.config_hash(),
            "parent_version": "",
            "iteration": 0,
            "metrics": {},
        }
        reg = register_cycle(
            model,
            run_id,
            lineage,
            pool=ImageSet(pool.images, pool_ids_arr),
            holdout=ImageSet(held.images, np.asarray(held.ids, dtype=object), held_y),  # trained on no label
            train=ImageSet(None, np.asarray([], dtype=object), np.asarray([], dtype=np.int64)),
            tracking_uri=tracker.tracking_uri,
            name=cfg.tracking.registered_model,
            cfg=registry_cfg,
        )
    store.add_scores(reg.version, [str(i) for i in pool.ids], scores)
    EmbeddingSet.from_vectors(
        [str(i) for i in [*pool.ids, *held.ids]], np.concatenate([pool_emb, held_emb]), reg.version
    ).save(embeddings_path(cfg.data_path, reg.version))
    promoted = reg.promotion is not None and reg.promotion.changed
    if promoted:
        reason = "no champion yet: the cold-start ranking serves until the first trained model"
    elif not reg.parity.passed:
        reason = f"parity failed: {reg.parity.reason}"
    elif not replaceable:
        reason = f"champion {champion} is a trained model, which stays (promote by hand to go back to a cold start)"
    else:
        reason = f"gate {reg.gate.decision.value}: {reg.gate.reason}"
    return ColdStartOutcome(reg.version, head.mode, len(pool.ids), promoted, reason, run_id)

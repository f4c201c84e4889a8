"""What one training run is given: the labelled images with their labels and a seeded sample of the
unlabelled pool, decoded into one array, plus the bookkeeping of which rows are labelled (``LabelledPool``).

``anomalymatch train`` (labels from a CSV) and the retrain watcher (labels from the label store) both build
their input here, so sampling, decoding and the report of skipped files are the same for both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from anomalymatch.errors import TrainingInputError
from anomalymatch.labels import Label, LabelTable
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.sources import ImageSource
from training.cycle import LabelledPool

log = logging.getLogger(__name__)


@dataclass
class TrainingInput:
    """Rows ``state.labelled_idx`` of ``images``/``ids`` are the labelled images (labels in ``state``), rows
    ``state.pool_idx`` the unlabelled pool sample."""

    images: np.ndarray  # uint8 (N, S, S, 3)
    ids: np.ndarray  # object array of image ids
    state: LabelledPool


def sample_pool(ids: list[str], sample: int, seed: int) -> list[str]:
    """A seeded sample of ``sample`` ids (sorted), or all of them when ``sample`` is 0 or not smaller."""
    if sample and len(ids) > sample:
        log.info("pool: training and scoring on a seeded sample of %d of %d unlabelled images", sample, len(ids))
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(ids, size=sample, replace=False).tolist())
    return ids


def assemble_training_input(
    *,
    labels: LabelTable,
    labelled_source: ImageSource,
    pool_source: ImageSource,
    spec: PreprocessSpec,
    pool_sample: int,
    seed: int,
    workers: int = 0,
    progress: bool = False,
) -> TrainingInput:
    """Decode the labelled images of ``labels`` from ``labelled_source`` and a seeded sample of
    ``pool_sample`` unlabelled images of ``pool_source`` (0 = all). ``ValueError`` when the labels lack a
    class or the pool is empty (``TrainingInputError``); files that fail to decode are skipped and reported
    in the log."""
    from anomalymatch.loader import load_images

    n_anomalies = labels.n_anomalies
    if n_anomalies == 0 or n_anomalies == len(labels):
        raise TrainingInputError(
            f"the labels hold {n_anomalies} anomaly and {len(labels) - n_anomalies} nominal images; "
            "training needs both classes"
        )
    labelled = set(labels.ids)
    pool_ids = sample_pool([i for i in pool_source.ids if i not in labelled], pool_sample, seed)
    if not pool_ids:
        raise TrainingInputError("the pool is empty: give unlabelled images (a --pool, or images not in the labels)")
    lab = load_images(labelled_source, spec, ids=list(labels.ids), workers=workers, progress=progress)
    pool = load_images(pool_source, spec, ids=pool_ids, workers=workers, progress=progress)
    for what, loaded in (("labelled", lab), ("pool", pool)):
        if len(loaded.report):
            log.warning("%s: %d image(s) skipped: %s", what, len(loaded.report), loaded.report.summary())
    label_of = labels.as_dict()
    ids = np.asarray(list(lab.ids) + list(pool.ids), dtype=object)
    y = [1 if label_of[i] is Label.ANOMALY else 0 for i in lab.ids]
    state = LabelledPool(np.arange(len(lab.ids)), y, np.arange(len(lab.ids), len(ids)))
    return TrainingInput(np.concatenate([lab.images, pool.images]), ids, state)

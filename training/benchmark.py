"""The AnomalyMatch paper's evaluation protocol (see BENCHMARK.md in the project docs): a simulated
active-learning campaign on a labelled image set, for FixMatch, a supervised-only baseline and three
baselines on the frozen pretrained embeddings (linear probe, nearest neighbours, isolation forest).
Every figure in the output is measured in the run."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalymatch.config import AppConfig
from anomalymatch.metrics import compute_metrics
from anomalymatch.preprocessing import PreprocessSpec

#: Methods on the frozen ImageNet embeddings (no network training): what training has to beat.
FROZEN_METHODS = ("linprobe", "knn", "iforest")
METHODS = ("fixmatch", "supervised", *FROZEN_METHODS)
METRIC_KEYS = ("auroc", "auprc", "recall_at_0.1pct", "precision_at_0.1pct", "recall_at_1pct", "precision_at_1pct")


@dataclass(frozen=True)
class BenchmarkCase:
    """A labelled image set and the protocol's split parameters for one anomaly definition."""

    name: str
    images: str
    labels: str
    anomaly_classes: tuple[str, ...]
    class_column: str = "class_name"
    filename_column: str = "filename"
    n_anomalies: int = 5
    n_nominal: int = 495
    pool_size: int | None = None
    anomaly_fraction: float | None = None
    crop: float = 1.0
    where: tuple[tuple[str, str], ...] = ()  # row filter, e.g. (("split", "train"),)


def _cifar(cls: str) -> BenchmarkCase:
    return BenchmarkCase(
        f"cifar10-{cls}",
        "cifar10/images.zip",
        "cifar10/labels.csv",
        (cls,),
        n_anomalies=5,
        n_nominal=495,
        pool_size=10_000,
        anomaly_fraction=0.01,
        where=(("split", "train"),),
    )


# GZ1 cutouts are 423 px with the galaxy in the middle: the centre half is kept (stated in the README).
CASES: dict[str, BenchmarkCase] = {
    "cifar10-airplane": _cifar("airplane"),
    "cifar10-cat": _cifar("cat"),
    "gz1-merger": BenchmarkCase(
        "gz1-merger", "gz1/images.zip", "gz1/labels.csv", ("merger",), n_anomalies=10, n_nominal=490, crop=0.5
    ),
    "gz1-edge_on": BenchmarkCase(
        "gz1-edge_on", "gz1/images.zip", "gz1/labels.csv", ("edge_on",), n_anomalies=10, n_nominal=30, crop=0.5
    ),
}


def default_data_root() -> Path:
    """``ANOMALYMATCH_BENCHMARK_DATA`` or the project's ``../shared/data``."""
    env = os.environ.get("ANOMALYMATCH_BENCHMARK_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_classes(
    path: Path, filename_column: str, class_column: str, where: Sequence[tuple[str, str]] = ()
) -> tuple[list[str], list[str]]:
    """Filenames and class names from a labelled CSV, keeping rows that match ``where``."""
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {filename_column, class_column, *(k for k, _ in where)} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks column(s) {sorted(missing)}; it has {reader.fieldnames}")
        rows = [r for r in reader if all(r[k] == v for k, v in where)]
    return [r[filename_column] for r in rows], [r[class_column] for r in rows]


def split_protocol(
    is_anomaly: np.ndarray,
    n_anomalies: int,
    n_nominal: int,
    pool_size: int | None,
    anomaly_fraction: float | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 1 of the protocol: labelled indices, their labels, and the pool (disjoint)."""
    rng = np.random.default_rng(seed)
    anomalies = rng.permutation(np.flatnonzero(is_anomaly))
    nominals = rng.permutation(np.flatnonzero(~is_anomaly))
    if len(anomalies) < n_anomalies or len(nominals) < n_nominal:
        raise ValueError(
            f"not enough images: need {n_anomalies} anomalies and {n_nominal} nominal, "
            f"have {len(anomalies)} and {len(nominals)}"
        )
    labelled = np.concatenate([anomalies[:n_anomalies], nominals[:n_nominal]])
    labelled_y = np.concatenate([np.ones(n_anomalies, np.int64), np.zeros(n_nominal, np.int64)])
    rest_a, rest_n = anomalies[n_anomalies:], nominals[n_nominal:]
    if pool_size is None and anomaly_fraction is None:
        pool = np.concatenate([rest_a, rest_n])
    else:
        size = pool_size if pool_size is not None else len(rest_a) + len(rest_n)
        fraction = anomaly_fraction if anomaly_fraction is not None else len(rest_a) / max(len(rest_a) + len(rest_n), 1)
        n_a = int(round(size * fraction))
        n_n = size - n_a
        if n_a > len(rest_a) or n_n > len(rest_n):
            raise ValueError(
                f"pool of {size} at {fraction:.2%} anomalies needs {n_a} anomalies and {n_n} nominal; "
                f"only {len(rest_a)} and {len(rest_n)} remain after the labelled set"
            )
        pool = np.concatenate([rest_a[:n_a], rest_n[:n_n]])
    return labelled, labelled_y, np.sort(pool)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(arr) == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each metric after the last cycle, per case and method."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        key = run["case"] if run["method"] == "fixmatch" else f"{run['case']}/{run['method']}"
        groups.setdefault(key, []).append(run["cycles"][-1])
    return {
        key: {
            m: mean_std([c[m] for c in last])
            for m in (*METRIC_KEYS, "seconds_per_iteration", "score_images_per_second")
        }
        for key, last in groups.items()
    }


def environment(device: str) -> dict:
    import torch

    return {
        "device": device,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def cycle_record(
    cycle: int, n_labelled: int, n_pool: int, metrics: dict, train_seconds: float, iterations: int, score_seconds: float
) -> dict:
    record = {"cycle": cycle, "n_labelled": n_labelled, "n_pool": n_pool}
    record.update({k: float(metrics[k]) for k in METRIC_KEYS})
    record.update(
        train_seconds=train_seconds,
        seconds_per_iteration=train_seconds / iterations if iterations else 0.0,
        score_seconds=score_seconds,
        score_images_per_second=n_pool / score_seconds if score_seconds > 0 else 0.0,
    )  # 0: not rescored
    return record


@dataclass
class LoadedCase:
    case: BenchmarkCase
    ids: np.ndarray  # source ids of the rows kept
    images: np.ndarray  # uint8 NHWC at the protocol size
    is_anomaly: np.ndarray
    classes: dict[str, int]
    embeddings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # frozen_embeddings' rows, by views


def load_case(case: BenchmarkCase, size: int, data_root: Path, workers: int = 0, progress: bool = False) -> LoadedCase:
    """Decode every image of the case at ``size`` (the case's crop applied); skipped files are reported."""
    from anomalymatch.loader import load_images
    from anomalymatch.sources import open_source

    filenames, classes = read_classes(data_root / case.labels, case.filename_column, case.class_column, case.where)
    spec = PreprocessSpec(size=size, crop=case.crop)
    source = open_source(data_root / case.images)
    loaded = load_images(source, spec, ids=filenames, workers=workers, progress=progress)
    if len(loaded.report):
        print(f"{case.name}: {len(loaded.report)} image(s) skipped: {loaded.report.summary()}")
    cls_of = dict(zip(filenames, classes))
    ids = np.asarray(loaded.ids, dtype=object)
    is_anomaly = np.asarray([cls_of[i] in case.anomaly_classes for i in ids])
    counts: dict[str, int] = {}
    for i in ids:
        counts[cls_of[i]] = counts.get(cls_of[i], 0) + 1
    return LoadedCase(case, ids, loaded.images, is_anomaly, dict(sorted(counts.items())))


def frozen_embeddings(data: LoadedCase, model, indices: np.ndarray, device: str | None) -> np.ndarray:
    """Pooled embeddings of the pretrained network for ``indices`` of the case, (N_images, D) with rows
    computed on demand and cached on ``data`` per test-time views (they do not depend on the seed)."""
    import torch

    from training.trainer import map_batches, select_device

    views = model.spec.views
    if views not in data.embeddings:
        data.embeddings[views] = np.full((len(data.images), model.backbone.num_features), np.nan, dtype=np.float32)
    embeddings = data.embeddings[views]
    todo = np.unique(indices)
    todo = todo[np.isnan(embeddings[todo, 0])]
    if len(todo):
        dev = select_device(device)
        model = model.to(dev, memory_format=torch.channels_last).eval()
        embeddings[todo] = map_batches(model.embed, data.images[todo], device=dev)
    return embeddings


def frozen_scores(
    method: str, labelled_x: np.ndarray, labelled_y: np.ndarray, pool_x: np.ndarray, seed: int
) -> np.ndarray:
    from anomalymatch.embedding_scores import knn_scores, linear_probe_scores

    if method == "linprobe":
        return linear_probe_scores(labelled_x, labelled_y, pool_x, seed=seed)
    if method == "knn":
        return knn_scores(labelled_x, labelled_y, pool_x, k=3)
    raise ValueError(f"no frozen scorer {method!r}")


def run_method(
    method: str,
    data: LoadedCase,
    seed: int,
    config: AppConfig,
    device: str | None,
    tracker=None,
    progress: bool = False,
    workdir: Path | None = None,
) -> dict:
    """One seed of one method on one case: the protocol's cycles, returning the run record."""
    import torch

    from training.active_learning import run_cycles
    from training.cycle import LabelledPool, oracle_picks
    from training.model import create_model
    from training.trainer import FixMatchTrainer

    case = data.case
    labelled, labelled_y, pool = split_protocol(
        data.is_anomaly, case.n_anomalies, case.n_nominal, case.pool_size, case.anomaly_fraction, seed
    )
    state = LabelledPool(labelled, labelled_y, pool)
    truth = data.is_anomaly.astype(np.int64)
    cfg = config.cycle
    tags = {"benchmark.case": case.name, "benchmark.method": method, "benchmark.seed": str(seed)}
    torch.manual_seed(seed)
    model = create_model(config.preprocess, pretrained=True)
    cycles: list[dict] = []
    run_id = None

    if method in ("fixmatch", "supervised"):
        fm = config.fixmatch if method == "fixmatch" else dataclasses.replace(config.fixmatch, lambda_u=0.0)
        trainer = FixMatchTrainer(model, fm, seed=seed, device=device)
        workdir = workdir or Path(config.data_dir) / "benchmark" / f"{case.name}-{method}-{seed}"
        outcome = run_cycles(
            trainer,
            data.images,
            data.ids,
            state,
            dataclasses.replace(config, fixmatch=fm),
            workdir,
            truth=truth,
            tracker=tracker,
            name=f"{case.name}/{method}/seed{seed}",
            tags=tags,
            progress=progress,
        )
        run_id = outcome.run_id
        for r in outcome.results:
            cycles.append(
                cycle_record(
                    r.cycle, r.n_labelled, r.n_pool, r.metrics, r.train_seconds, len(r.history), r.score_seconds
                )
            )
    elif method in FROZEN_METHODS:
        t0 = time.perf_counter()
        features = frozen_embeddings(data, model, np.concatenate([labelled, pool]), device)
        embed_seconds = time.perf_counter() - t0
        pool_scores = None
        if method == "iforest":  # unsupervised: fitted once on the pool, labels never used
            from sklearn.ensemble import IsolationForest

            forest = IsolationForest(n_estimators=200, random_state=seed).fit(features[pool])
            pool_scores = dict(zip(pool.tolist(), -forest.score_samples(features[pool])))

        def run_cycles(run_id_: str | None) -> None:
            for c in range(1, cfg.cycles + 1):
                state.cycle = c
                t1 = time.perf_counter()
                if pool_scores is not None:
                    s = np.asarray([pool_scores[i] for i in state.pool_idx], dtype=np.float64)
                else:
                    s = frozen_scores(
                        method, features[state.labelled_idx], state.labelled_y, features[state.pool_idx], seed
                    )
                seconds = time.perf_counter() - t1 + (embed_seconds if c == 1 else 0.0)
                metrics = compute_metrics(truth[state.pool_idx], s, data.ids[state.pool_idx])
                cycles.append(cycle_record(c, len(state.labelled_idx), len(state.pool_idx), metrics, 0.0, 0, seconds))
                if tracker is not None:
                    tracker.log_metrics(run_id_, {k: cycles[-1][k] for k in METRIC_KEYS}, step=c)
                if cfg.picks and c < cfg.cycles:
                    pos, y = oracle_picks(data.ids[state.pool_idx], s, truth[state.pool_idx], cfg.picks)
                    state.label(state.pool_idx[pos], y)

        if tracker is not None:
            with tracker.parent_run(f"{case.name}/{method}/seed{seed}", config.to_dict(), tags) as run_id:
                run_cycles(run_id)
        else:
            run_cycles(None)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return {"case": case.name, "method": method, "seed": seed, "cycles": cycles, "mlflow_run_id": run_id}

"""``anomalymatch demo``, the main job on embedded defaults: the whole labelling loop on the real FIRST
radio galaxy images shipped inside the PyPI package ``firstgalaxydata`` (Griese et al. 2023; 2,158
greyscale 300x300 images, classes FRI, FRII, Compact, Bent). Bent sources are the anomalies; a
simulated expert answers from the true classes. Train and promote a first model, serve it, pull
candidates, post labels, watch the retrain promote a new version; everything is logged to MLflow and
kept in the label store under the project data folder."""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from anomalymatch.labels import Label
from anomalymatch.preprocessing import VIEW_COUNTS

FIRST_CLASSES = {0: "FRI", 1: "FRII", 2: "Compact", 3: "Bent"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--iterations", type=int, default=60, help="FixMatch iterations per training cycle (default 60)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="labelling rounds after the first training: pull, label, retrain, promote (default 1)",
    )
    p.add_argument(
        "--picks",
        type=int,
        default=20,
        help="candidates the simulated expert labels per round "
        "(default 20; also the retrain trigger retrain.min_labels)",
    )
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument(
        "--views",
        choices=tuple(VIEW_COUNTS),
        default="d4",
        help="test-time views the model averages (default d4: radio sources have no preferred orientation)",
    )
    p.add_argument("--n-anomalies", type=int, default=5, help="labelled Bent examples at the start (default 5)")
    p.add_argument("--n-nominal", type=int, default=50, help="labelled other sources at the start (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one retrain (default 1800)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def first_zip_path() -> Path:
    try:
        import firstgalaxydata
    except ImportError as exc:
        raise ImportError(
            "the demo data comes from the PyPI package firstgalaxydata: pip install firstgalaxydata==0.2.1"
        ) from exc
    path = Path(firstgalaxydata.__file__).parent / "galaxy_data_h5.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed firstgalaxydata package; reinstall it")
    return path


def prepare_first_galaxies(out_dir: Path) -> tuple[Path, Path]:
    """Convert the package's zipped per-image HDF5 groups into one HDF5 source (``images`` (N,300,300)
    uint8 and ``ids``) plus a classes CSV (filename,class_name). Done once; reused afterwards."""
    import h5py

    h5_path, csv_path = out_dir / "first_galaxies.h5", out_dir / "first_galaxies_classes.csv"
    if h5_path.is_file() and csv_path.is_file():
        return h5_path, csv_path
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(first_zip_path()) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".h5"))
        with zf.open(member) as raw:
            data = raw.read()  # ~200 MB inflated; h5py reads it from memory
    import io

    ids, classes, images = [], [], []
    with h5py.File(io.BytesIO(data), "r") as src:
        for key in sorted(src.keys(), key=lambda k: int(k.split("_")[-1])):
            label = src[f"{key}/Label_literature"][()]
            if not np.isfinite(label) or int(label) not in FIRST_CLASSES:
                continue
            ids.append(key)
            classes.append(FIRST_CLASSES[int(label)])
            images.append(np.asarray(src[f"{key}/Img"], dtype=np.uint8))
    tmp = h5_path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as dst:
        dst.create_dataset("images", data=np.stack(images), chunks=(64, *images[0].shape), compression="lzf")
        dst.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
    tmp.replace(h5_path)
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["filename", "class_name"])
        writer.writerows(zip(ids, classes))
    return h5_path, csv_path


CAMPAIGN = "demo-first-bent"


def run(args: argparse.Namespace) -> int:
    """Seed labels -> first model (registered, checked, promoted) -> service with its retrain watcher -> bulk
    scoring -> per round: pull candidates, the simulated expert labels them, push; the watcher retrains from
    the champion, the gate decides, the service swaps models -> precision at the top before and after."""
    from dataclasses import replace

    from anomalymatch.campaign_images import setup_campaign
    from anomalymatch.config import load_config
    from anomalymatch.labelstore import LabelEntry, LabelStore
    from anomalymatch.model_ref import resolve_tracking_uri
    from registry.store import CHAMPION, get_aliases, mlflow_client
    from serving.launch import start_service
    from training.benchmark import read_classes, split_protocol
    from training.retrain import RetrainWatcher, describe_outcome

    config = load_config(
        None,
        {
            "data_dir": args.data_dir,
            "cycle.iterations": args.iterations,
            "cycle.seed": args.seed,
            "preprocess.size": args.size,
            "preprocess.views": args.views,
            "cycle.top_candidates": 20,
            "fixmatch.ema_warmup": True,
            "retrain.min_labels": args.picks,
            "retrain.max_wait_minutes": 0,
            "retrain.poll_s": 2.0,
            "retrain.in_service": True,
            "retrain.campaign": CAMPAIGN,
            "serving.port": 0,
            "serving.reload_interval_s": 1.0,
        },
    )
    home = config.data_path
    demo_dir = (home / "demo").resolve()
    config = config.replace(serving=replace(config.serving, data_roots=(str(demo_dir),)))
    print(f"AnomalyMatch demo: FIRST radio galaxies, anomaly = Bent; data folder {home}")
    h5_path, classes_csv = prepare_first_galaxies(demo_dir)
    filenames, classes = read_classes(classes_csv, "filename", "class_name")
    class_of = dict(zip(filenames, classes))
    is_bent = np.asarray([c == "Bent" for c in classes])

    store = LabelStore.from_config(config.labelstore, home)
    setup_campaign(store, CAMPAIGN, [h5_path], config.preprocess)
    labelled, labelled_y, _ = split_protocol(is_bent, args.n_anomalies, args.n_nominal, None, None, args.seed)
    seed = [LabelEntry(filenames[i], "anomaly" if y else "nominal", "demo-seed") for i, y in zip(labelled, labelled_y)]
    added = store.add_labels(seed, key=f"demo-seed-{args.seed}-{args.n_anomalies}-{args.n_nominal}").added
    print(
        f"{len(filenames)} images ({int(is_bent.sum())} Bent) in the label store; "
        f"{args.n_anomalies} Bent + {args.n_nominal} others labelled to start"
        + ("" if added else " (already there from an earlier run: the campaign continues)")
    )

    name = config.tracking.registered_model
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri, home)
    if get_aliases(mlflow_client(tracking_uri), name).get(CHAMPION) is None:
        print(f"training the first model ({args.iterations} FixMatch iterations from ImageNet weights)...")
        outcome = RetrainWatcher(config, store, progress=not args.quiet).run_once(force=True)
        print("  " + describe_outcome(outcome))
        if outcome.failed or not outcome.promoted:
            print("the first model was not promoted; see the MLflow run", file=sys.stderr)
            return 1

    token_env = config.labelstore.token_env
    own_token = not os.environ.get(token_env)
    os.environ.setdefault(token_env, secrets.token_hex(16))  # the service and its watcher inherit it
    print("starting the scoring service (BentoML, ONNX Runtime) with its retrain watcher...")
    with start_service(config) as svc:
        loop = DemoLoop(svc.url, os.environ[token_env], h5_path, class_of, demo_dir / "labelling", store)
        info = loop.info()
        print(f"  serving version {info['model_version']} at {svc.url} on {info['providers']}")
        shown = f"this run's token {os.environ[token_env]}" if own_token else f"the token in ${token_env}"
        print(f"  the labelling web app, while the demo runs: {svc.url}/ui/ (sign in with {shown})")
        first = loop.score_archive()
        start_pool = loop.pool()
        rounds = []
        for k in range(1, args.rounds + 1):
            picked = loop.label_round(k, args.picks)
            print(
                f"round {k}: the expert labelled {len(picked)} candidates, "
                f"{sum(class_of[i] == 'Bent' for i in picked)} of them Bent; waiting for the retrain..."
            )
            status = loop.wait_retrain(store.last_seq(), timeout=args.timeout)
            print(
                f"  retrain: version {status['last_version']} "
                f"{'promoted' if status['last_promoted'] else 'not promoted'} ({status['last_reason']})"
            )
            rounds.append(loop.score_archive() if status["last_promoted"] else first)
        final_pool = loop.pool()  # both models are measured on the same images: those still unlabelled
        print(f"on the {len(final_pool)} images still unlabelled (of {len(start_pool)} at the start):")
        for scores in [first] + [r for r in rounds[-1:] if r is not first]:
            m = scores.metrics(final_pool, class_of)
            print(
                f"  version {scores.version}: precision@1% {m['precision_at_1pct']:.2f}, "
                f"AUROC {m['auroc']:.3f}, AUPRC {m['auprc']:.3f}"
            )
        print("top candidates now (id, score, true class):")
        for row in loop.client.candidates(n=10):
            print(f"  {row['image_id']:>10}  {row['score']:.4f}  {class_of[row['image_id']]}")
        loop.more_like_this(final_pool)
        loop.close()
    store.close()
    print(f"service stopped (log {svc.log_path}; watcher log {home / 'retrain' / 'watcher.log'})")
    print(f"MLflow: {tracking_uri}; open the UI: .venv/bin/mlflow ui --backend-store-uri {tracking_uri}")
    print(f"registry: .venv/bin/anomalymatch registry list --data-dir {home}")
    print(f"serve it: .venv/bin/anomalymatch serve --data-dir {home}; label: anomalymatch label pull --n 20 --out DIR")
    return 0


class ArchiveScores:
    """One bulk scoring job's scores by image id, with the model version that made them."""

    def __init__(self, version: str, scores: dict[str, float]) -> None:
        self.version, self.scores = version, scores

    def metrics(self, ids: list[str], class_of: dict[str, str]) -> dict[str, float]:
        from anomalymatch.metrics import compute_metrics

        truth = np.asarray([class_of[i] == "Bent" for i in ids], dtype=np.int64)
        return compute_metrics(truth, np.asarray([self.scores[i] for i in ids]), np.asarray(ids, dtype=object))


class DemoLoop:
    """What the demo does through the running service, as a scientist's scripts would: bulk scoring, the
    labelling client (pull, fill the sheet, push) with a simulated expert, and retraining status."""

    def __init__(self, url: str, token: str, h5_path: Path, class_of: dict[str, str], sheets: Path, store) -> None:
        from labeling.client import Client

        self.url, self.h5_path, self.class_of, self.sheets, self.store = url, h5_path, class_of, sheets, store
        self.client = Client(url, token)

    def info(self) -> dict:
        from serving import client as scoring

        return scoring.info(self.url)

    def score_archive(self) -> ArchiveScores:
        """Score every image with the served model in a bulk job (Parquet shards, resumable)."""
        from serving import client as scoring
        from serving.bulk import read_scores

        job = scoring.submit_bulk(self.url, [str(self.h5_path)])
        status = scoring.wait_bulk(self.url, job["job_id"])
        if status["status"] != "done":
            raise RuntimeError(f"bulk job {job['job_id']} ended {status['status']}: {status.get('error', '')}")
        table = read_scores(status["out_dir"]).to_pydict()
        print(
            f"  bulk job {job['job_id']}: {len(table['id'])} images scored by version {status['model_version']} "
            f"({status['images_per_second']:.0f} images/s) -> {status['out_dir']}"
        )
        return ArchiveScores(status["model_version"], dict(zip(table["id"], table["score"])))

    def pool(self) -> list[str]:
        labelled = set(self.store.current_labels(with_extra=False).ids)
        return [i for i in self.class_of if i not in labelled]

    def label_round(self, k: int, n: int) -> list[str]:
        """Pull the top ``n`` candidates (images + sheet), answer from the true classes, push the sheet."""
        sheet = self.client.pull(self.sheets / f"round-{k}", n=n)
        with sheet.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            row["label"] = "anomaly" if self.class_of[row["filename"]] == "Bent" else "nominal"
        with sheet.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        self.client.push(sheet, user="demo-expert")
        return [row["filename"] for row in rows]

    def more_like_this(self, unlabelled: list[str], k: int = 20) -> None:
        """More like this: the nearest unlabelled neighbours of a Bent source the expert found (else of one of
        the starting labels) by the served model's features, against the Bent share of all unlabelled images."""
        anomalies = [r for r in self.store.history() if r.label is Label.ANOMALY]
        found = [r.image_id for r in anomalies if r.user == "demo-expert"] + [r.image_id for r in anomalies]
        if not found:
            return
        try:
            rows = self.client.similar(found[0], k=k, unlabelled=True)
        except Exception as exc:  # e.g. 404: no stored features for it; the demo's result stands
            print(f"more like this: not available ({exc})")
            return
        bent = sum(self.class_of[r["image_id"]] == "Bent" for r in rows)
        base = sum(self.class_of[i] == "Bent" for i in unlabelled) / max(len(unlabelled), 1)
        print(
            f"more like this: the {len(rows)} unlabelled images most like Bent source {found[0]} hold {bent} Bent "
            f"({bent / max(len(rows), 1):.0%}; {base:.0%} of all unlabelled images are Bent)"
        )

    def wait_retrain(self, label_seq: int, timeout: float) -> dict:
        """Wait until the watcher has trained on the labels up to ``label_seq`` and, when it promoted the new
        version, the service serves it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.status()
            if status["status"] == "failed":
                raise RuntimeError(f"the retrain failed (the champion keeps serving): {status['last_error']}")
            done = status["status"] == "idle" and status["trained_seq"] >= label_seq
            if done and (not status["last_promoted"] or self.info()["model_version"] == status["last_version"]):
                return status
            time.sleep(2)
        raise TimeoutError(f"no retrain finished within {timeout:.0f} s; see the watcher log")

    def close(self) -> None:
        self.client.close()

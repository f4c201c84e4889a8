"""``anomalymatch demo``, the main job on embedded defaults: a short active-learning campaign on the
real FIRST radio galaxy images shipped inside the PyPI package ``firstgalaxydata`` (Griese et al.
2023; 2,158 greyscale 300x300 images, classes FRI, FRII, Compact, Bent). Bent sources are the
anomalies; a simulated expert answers from the true classes between cycles. Everything is logged to
MLflow under the project data folder."""
from __future__ import annotations

import argparse
import csv
import sys
import zipfile
from pathlib import Path

import numpy as np

FIRST_CLASSES = {0: "FRI", 1: "FRII", 2: "Compact", 3: "Bent"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--iterations", type=int, default=60, help="FixMatch iterations per cycle (default 60)")
    p.add_argument("--cycles", type=int, default=2, help="active-learning cycles (default 2)")
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--n-anomalies", type=int, default=5, help="labelled Bent examples at the start (default 5)")
    p.add_argument("--n-nominal", type=int, default=50, help="labelled other sources at the start (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def first_zip_path() -> Path:
    try:
        import firstgalaxydata
    except ImportError as exc:
        raise ImportError("the demo data comes from the PyPI package firstgalaxydata: "
                          "pip install firstgalaxydata==0.2.1") from exc
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


def run(args: argparse.Namespace) -> int:
    import torch

    from anomalymatch.config import load_config
    from anomalymatch.metrics import compute_metrics
    from anomalymatch.loader import load_images
    from anomalymatch.sources import open_source
    from training.benchmark import read_classes, split_protocol
    from training.campaign import run_campaign
    from training.cycle import CampaignState
    from training.model import create_model
    from training.tracking import CampaignTracker
    from training.trainer import FixMatchTrainer

    config = load_config(None, {"data_dir": args.data_dir, "cycle.iterations": args.iterations,
                                "cycle.cycles": args.cycles, "cycle.seed": args.seed, "preprocess.size": args.size,
                                "cycle.top_candidates": 20})
    home = config.data_path
    print(f"AnomalyMatch demo: FIRST radio galaxies, anomaly = Bent; data folder {home}")
    h5_path, classes_csv = prepare_first_galaxies(home / "demo")
    filenames, classes = read_classes(classes_csv, "filename", "class_name")
    loaded = load_images(open_source(h5_path), config.preprocess, workers=config.workers or None,
                         progress=not args.quiet)
    class_of = dict(zip(filenames, classes))
    ids = np.asarray(loaded.ids, dtype=object)
    truth = np.asarray([class_of[i] == "Bent" for i in ids], dtype=np.int64)
    print(f"{len(ids)} images ({int(truth.sum())} Bent); {args.n_anomalies} Bent + {args.n_nominal} others "
          f"labelled to start, the rest is the unlabelled pool")
    labelled, labelled_y, pool = split_protocol(truth.astype(bool), args.n_anomalies, args.n_nominal, None, None,
                                                args.seed)
    state = CampaignState(labelled, labelled_y, pool)
    torch.manual_seed(args.seed)
    trainer = FixMatchTrainer(create_model(config.preprocess, pretrained=True), config.fixmatch, seed=args.seed)
    before = trainer.score(loaded.images[pool])
    m0 = compute_metrics(truth[pool], before, ids[pool])
    tracker = CampaignTracker(config.tracking, home)

    def report(result) -> None:
        m = result.metrics
        print(f"cycle {result.cycle}: {result.n_labelled} labelled, pool {result.n_pool}: AUROC {m['auroc']:.3f}, "
              f"AUPRC {m['auprc']:.3f}, precision@1% {m['precision_at_1pct']:.2f} "
              f"({result.seconds_per_iteration:.2f} s/iteration, {result.score_images_per_second:.0f} images/s scored)")

    outcome = run_campaign(trainer, loaded.images, ids, state, config, home / "campaigns" / "demo", truth=truth,
                           tracker=tracker, name="demo-first-bent", tags={"anomalymatch.demo": "first-bent"},
                           progress=not args.quiet, on_cycle=report)
    last = outcome.results[-1]
    print(f"precision@1% before training {m0['precision_at_1pct']:.2f} -> after {len(outcome.results)} cycle(s) "
          f"{last.metrics['precision_at_1pct']:.2f} (AUROC {m0['auroc']:.3f} -> {last.metrics['auroc']:.3f})")
    print("top candidates (id, score, true class):")
    for image_id, score in last.candidates[:10]:
        print(f"  {image_id:>10}  {score:.4f}  {class_of[image_id]}")
    print(f"MLflow campaign run {outcome.run_id} in {tracker.tracking_uri}")
    print(f"open the UI: .venv/bin/mlflow ui --backend-store-uri {tracker.tracking_uri}")
    return 0

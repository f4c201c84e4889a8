"""FixMatch iteration time and pool-scoring throughput at a given size on this machine.

    .venv/bin/python benchmarks/bench_training.py --size 64 [--iterations 20] [--out results/training.json]

One iteration = 16 labelled (weak) + 80 unlabelled weak + 80 strong images, forward and backward,
SGD step and EMA update, augmentations included. Scoring = EMA model, eval, batches of 256.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomalymatch.config import FixMatchConfig  # noqa: E402
from anomalymatch.preprocessing import PreprocessSpec  # noqa: E402
from training.model import create_model  # noqa: E402
from training.trainer import FixMatchTrainer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--pool", type=int, default=5000, help="images to score")
    p.add_argument("--channels-last", choices=["on", "off", "both"], default="both")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    labelled = rng.integers(0, 256, (500, args.size, args.size, 3), dtype=np.uint8)
    y = np.zeros(500, dtype=np.int64)
    y[:5] = 1
    pool = rng.integers(0, 256, (max(args.pool, 400), args.size, args.size, 3), dtype=np.uint8)
    rows = []
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.channels_last]
    for channels_last in modes:
        torch.manual_seed(0)
        trainer = FixMatchTrainer(
            create_model(PreprocessSpec(size=args.size)),
            FixMatchConfig(channels_last=channels_last),
            device=args.device,
        )
        trainer.train(labelled, y, pool, iterations=3)  # warm-up
        t0 = time.perf_counter()
        trainer.train(labelled, y, pool, iterations=args.iterations)
        per_iteration = (time.perf_counter() - t0) / args.iterations
        trainer.score(pool[:512])  # warm-up
        t0 = time.perf_counter()
        trainer.score(pool[: args.pool])
        score_rate = args.pool / (time.perf_counter() - t0)
        rows.append(
            {
                "size": args.size,
                "channels_last": channels_last,
                "seconds_per_iteration": per_iteration,
                "score_images_per_second": score_rate,
                "device": str(trainer.device),
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
            }
        )
    print("| size | channels_last | s / iteration (16+80+80) | scoring images/s | device | threads |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['channels_last']} | {r['seconds_per_iteration']:.3f} | "
            f"{r['score_images_per_second']:.0f} | {r['device']} | {r['threads']} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

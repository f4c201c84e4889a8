"""Markdown table of `anomalymatch benchmark` results (mean ± std over seeds) for the README.

.venv/bin/python benchmarks/protocol_table.py benchmarks/results/gz1-merger-64.json ...
"""

from __future__ import annotations

import json
import sys

METRICS = ["auroc", "auprc", "recall_at_1pct", "precision_at_1pct", "precision_at_0.1pct"]


def rows(path: str) -> list[str]:
    with open(path) as fh:
        results = json.load(fh)
    out = []
    for key, summary in results["summary"].items():
        case, _, method = key.partition("/")
        seeds = sorted(
            {
                r["seed"]
                for r in results["runs"]
                if r["case"] == case and r.get("method", "fixmatch") == (method or "fixmatch")
            }
        )
        cells = [f"{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}" for m in METRICS]
        times = sorted(
            c["seconds_per_iteration"]
            for r in results["runs"]
            if r["case"] == case and r.get("method", "fixmatch") == (method or "fixmatch")
            for c in r["cycles"]
            if c.get("seconds_per_iteration")
        )
        speed = f"{times[len(times) // 2]:.2f}" if times else "-"
        out.append(f"| {case} | {method or 'fixmatch'} | {','.join(map(str, seeds))} | {' | '.join(cells)} | {speed} |")
    return out


def main(paths: list[str]) -> None:
    print(
        "| case | method | seeds | AUROC | AUPRC | recall@1% | precision@1% | precision@0.1% | s / iteration (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        print("\n".join(rows(path)))


if __name__ == "__main__":
    main(sys.argv[1:])

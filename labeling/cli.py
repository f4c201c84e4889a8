"""``anomalymatch label``: pull candidates to label, push the labels back, see the retraining status.

    anomalymatch label pull --n 20 --out DIR     # DIR/images/* + DIR/labels.csv to fill in
    anomalymatch label push DIR/labels.csv       # posts the rows that have a label (needs the token)
    anomalymatch label status                    # idle / queued / running / failed, the last version
    anomalymatch label suspects                  # labels the model's features contradict (check them again)

The service URL comes from --url or $ANOMALYMATCH_URL (default http://127.0.0.1:3000); the write token
from $ANOMALYMATCH_LABEL_TOKEN or --token-file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="service URL (default $ANOMALYMATCH_URL or http://127.0.0.1:3000)")
    p.add_argument("--token-file", type=Path, help="file holding the write token (default $ANOMALYMATCH_LABEL_TOKEN)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    pull = sub.add_parser("pull", help="download candidate images and a labels.csv to fill in")
    pull.add_argument("--n", type=int, default=20, help="how many candidates (default 20)")
    pull.add_argument(
        "--strategy",
        default="top",
        choices=["top", "uncertain", "explore"],
        help="top: highest scores (default); uncertain: scores nearest 0.5; explore: random",
    )
    pull.add_argument("--out", type=Path, required=True, help="folder for images/ and labels.csv")
    pull.add_argument("--png", action="store_true", help="render every image as PNG (FITS, TIFF, HDF5 rows)")
    push = sub.add_parser("push", help="post the labelled rows of a labels.csv")
    push.add_argument("csv", type=Path, help="the filled-in labels.csv")
    push.add_argument("--user", default="", help="who labelled (stored with each label)")
    sub.add_parser("status", help="the retraining status as JSON")
    suspects = sub.add_parser("suspects", help="labelled images whose label the model's features contradict")
    suspects.add_argument("--threshold", type=float, default=0.8, help="confidence of the contradiction (0.8)")
    suspects.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")


def run(args: argparse.Namespace) -> int:
    from anomalymatch.labels import LabelError
    from labeling.client import Client, ServiceError

    token = args.token_file.read_text().splitlines()[0].strip() if args.token_file else None
    with Client(args.url, token) as client:
        try:
            if args.action == "pull":
                sheet = client.pull(args.out, args.n, args.strategy, args.png)
                with sheet.open() as fh:
                    n = sum(1 for _ in fh) - 1
                print(
                    f"{n} candidate(s) in {args.out / 'images'}; fill in the label column of {sheet} "
                    f"(anomaly / nominal, empty = skip), then: anomalymatch label push {sheet}"
                )
            elif args.action == "push":
                result = client.push(args.csv, user=args.user)
                note = " (this file was already pushed)" if result.get("replayed") else ""
                print(
                    f"{result['added']} label(s) stored, {result['skipped']} unchanged{note}; "
                    f"retraining: {result.get('retrain', 'unknown')}"
                )
            elif args.action == "suspects":
                found = client.suspects(args.threshold, args.limit)
                print(
                    f"{found['n']} suspect label(s) of {found['judged']} judged (model version "
                    f"{found['model_version']}, out-of-fold confidence > {found['threshold']})"
                )
                print("doubt\tlabel\tuser\tid")
                for s in found["suspects"]:
                    print(f"{s['doubt']:.3f}\t{s['label']}\t{s['user'] or '-'}\t{s['image_id']}")
            else:
                print(json.dumps(client.status(), indent=1))
        except (ServiceError, LabelError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0

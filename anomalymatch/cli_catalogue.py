"""``anomalymatch catalogue``: attach a survey catalogue (id, ra, dec, any other columns) to the campaign.

    anomalymatch catalogue attach catalogue.csv [--id-column objid]
    anomalymatch catalogue show 587727178986356823.jpeg

Its columns then appear with candidates (``/candidates``, the web app) and in the web app's export of
the labelled anomalies; images with coordinates carry ESASky and Legacy Surveys viewer links.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    attach = sub.add_parser("attach", help="store a catalogue CSV's rows (an id's earlier row is replaced)")
    attach.add_argument("csv", type=Path)
    attach.add_argument("--id-column", default="id", help="the column holding image ids (default id)")
    show = sub.add_parser("show", help="one image's catalogue row and sky links, as JSON")
    show.add_argument("image_id")
    for parser in (attach, show):
        parser.add_argument("--config", type=Path, help="YAML config (its labelstore section)")
        parser.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")


def run(args: argparse.Namespace) -> int:
    from anomalymatch.catalogue import read_catalogue, sky_links
    from anomalymatch.config import load_config
    from anomalymatch.labelstore import LabelStore

    config = load_config(args.config, {"data_dir": args.data_dir})
    with LabelStore.from_config(config.labelstore, config.data_path) as store:
        if args.action == "attach":
            rows = read_catalogue(args.csv, args.id_column)
            stored, known = store.attach_catalogue(rows)
            note = f"; {stored - known} of them name no registered image" if known < stored else ""
            print(f"{stored} catalogue row(s) attached from {args.csv}{note}")
        else:
            row = store.catalogue_for([args.image_id]).get(args.image_id)
            if row is None:
                print(f"error: {args.image_id!r} has no catalogue row")
                return 1
            print(
                json.dumps(
                    {
                        "image_id": row.image_id,
                        "ra": row.ra,
                        "dec": row.dec,
                        **row.columns,
                        "links": sky_links(row.ra, row.dec),
                    },
                    indent=1,
                )
            )
    return 0

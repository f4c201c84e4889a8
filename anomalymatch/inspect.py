"""``anomalymatch inspect``: count and check the images in folders, zips, HDF5 or image files.

For each source: how many images it lists, their native formats, shapes and dtypes, how many
decode to the model size, and every skipped or unsupported entry with its reason. Problems in
the data are reported (exit code 0); a source that cannot be opened at all exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalymatch.preprocessing import FitsStretch, PreprocessSpec

SHAPES_SHOWN = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="folder, .zip, .h5/.hdf5 file or image file (several allowed)"
    )
    parser.add_argument("--size", type=int, default=64, help="model input size to test decoding at (default 64)")
    parser.add_argument("--crop", type=float, default=1.0, help="centre-crop fraction of the shorter side")
    parser.add_argument(
        "--fits-stretch",
        default=FitsStretch.ASINH.value,
        choices=[s.value for s in FitsStretch],
        help="display stretch for FITS and float data (default asinh)",
    )
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (default 0: one per CPU)")
    parser.add_argument(
        "--limit", type=int, default=None, help="decode only the first N images of each source (all are still counted)"
    )
    parser.add_argument("--images-dataset", default=None, help="HDF5: name of the images dataset (default: auto)")
    parser.add_argument("--ids-dataset", default=None, help="HDF5: name of the ids dataset (default: auto)")
    parser.add_argument("--show", type=int, default=20, help="how many skipped entries to list (default 20)")
    parser.add_argument("--report-csv", type=Path, default=None, help="write every skipped entry as id,reason")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _check_item(source: Any, index: int, spec: PreprocessSpec) -> tuple[str, str, str]:
    """(format, 'HxWxC dtype', failure reason or '') for one image."""
    import numpy as np

    from anomalymatch.decode import decode_image, probe_image
    from anomalymatch.errors import DecodeError, SourceReadError
    from anomalymatch.transform import to_model_size

    fmt, shape = "?", ""
    try:
        item = source.read_at(index)
        if isinstance(item, np.ndarray):
            fmt, shape = "array", "x".join(map(str, item.shape)) + f" {item.dtype.name}"
            to_model_size(item, spec)
        else:
            info = probe_image(item, source.ids[index])
            fmt, shape = info.format, "x".join(map(str, info.shape)) + f" {info.dtype}"
            decode_image(item, source.ids[index], spec)
    except (DecodeError, SourceReadError) as exc:
        return fmt, shape, exc.reason
    return fmt, shape, ""


def inspect_source(source: Any, spec: PreprocessSpec, workers: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Decode (up to ``limit``) images of ``source`` and summarise formats, shapes and failures."""
    from anomalymatch.loader import SkipReport, decode_threads, map_ordered

    workers = decode_threads(workers)
    count = len(source) if limit is None else min(len(source), max(0, limit))
    report = SkipReport()
    report.extend(source.unsupported)
    formats: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    decoded = 0

    def check(chunk: range) -> list[tuple[int, tuple[str, str, str]]]:
        return [(i, _check_item(source, i, spec)) for i in chunk]

    chunks = (range(k, min(k + 16, count)) for k in range(0, count, 16))
    for results in map_ordered(check, chunks, workers, 4 * workers):
        for index, (fmt, shape, reason) in results:
            formats[fmt] += 1
            if shape:
                shapes[shape] += 1
            if reason:
                report.add(source.ids[index], reason)
            else:
                decoded += 1
    failed = len(report) - len(source.unsupported)
    return {
        "source": source.name,
        "kind": source.kind,
        "images": len(source),
        "checked": count,
        "decoded": decoded,
        "failed": failed,
        "unsupported": len(source.unsupported),
        "size": spec.size,
        "formats": dict(formats.most_common()),
        "shapes": dict(shapes.most_common()),
        "skipped": [{"id": i, "reason": r} for i, r in report.items],
    }


def format_text(result: dict[str, Any], show: int) -> str:
    """Human-readable summary of one ``inspect_source`` result."""
    n, checked = result["images"], result["checked"]
    lines = [
        f"{result['source']} ({result['kind']})",
        f"  images:      {n:,}" + (f" (checked the first {checked:,})" if checked < n else ""),
    ]
    lines.append(f"  decoded:     {result['decoded']:,} of {checked:,} at {result['size']}x{result['size']}")
    lines.append(f"  failed:      {result['failed']:,}")
    lines.append(f"  unsupported: {result['unsupported']:,} (not image files, not read)")
    if result["formats"]:
        lines.append("  formats:     " + ", ".join(f"{k} {v:,}" for k, v in result["formats"].items()))
    if result["shapes"]:
        lines.append("  native shapes (dtype):")
        shown = list(result["shapes"].items())[:SHAPES_SHOWN]
        lines += [f"    {shape:<24} {count:,}" for shape, count in shown]
        if len(result["shapes"]) > SHAPES_SHOWN:
            lines.append(f"    ... {len(result['shapes']) - SHAPES_SHOWN} more shapes")
    skipped = result["skipped"]
    if skipped:
        lines.append(f"  SKIPPED ({len(skipped):,}):")
        lines += [f"    {s['id']}: {s['reason']}" for s in skipped[:show]]
        if len(skipped) > show:
            lines.append(f"    ... and {len(skipped) - show:,} more (use --report-csv FILE to list all)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from anomalymatch.sources import HDF5_SUFFIXES, SourceError, open_source

    try:
        spec = PreprocessSpec(size=args.size, crop=args.crop, fits_stretch=args.fits_stretch)
    except ValueError as exc:
        print(f"anomalymatch inspect: {exc}", file=sys.stderr)
        return 2
    sources = []
    for path in args.sources:
        options = {}
        if Path(path).suffix.lower() in HDF5_SUFFIXES:
            options = {"images": args.images_dataset, "ids": args.ids_dataset}
        try:
            sources.append(open_source(path, **options))
        except (SourceError, OSError) as exc:
            print(f"anomalymatch inspect: {exc}", file=sys.stderr)
            return 2
    results = [inspect_source(source, spec, args.workers, args.limit) for source in sources]
    for source in sources:
        source.close()
    if args.report_csv is not None:
        _write_csv(args.report_csv, results)
    if args.json:
        print(json.dumps({"sources": results}, indent=2))
    else:
        print("\n\n".join(format_text(r, args.show) for r in results))
    return 0


def _write_csv(path: Path, results: Sequence[dict[str, Any]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "id", "reason"])
        for r in results:
            writer.writerows((r["source"], s["id"], s["reason"]) for s in r["skipped"])

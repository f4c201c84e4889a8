"""``anomalymatch registry``: list, show, promote, roll back and export registered model versions."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")
    p.add_argument("--config", type=Path, help="YAML config (tracking section: tracking_uri, registered_model)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: config, $MLFLOW_TRACKING_URI, embedded store)")
    p.add_argument("--name", help="registered model name (default: tracking.registered_model, 'anomalymatch')")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
    _common(sub.add_parser("list", help="versions with metrics, gate result, parity and aliases"))
    show = sub.add_parser("show", help="everything recorded about one version: lineage, parity, gate, promotion")
    show.add_argument("version")
    _common(show)
    promote = sub.add_parser("promote", help="make a version the champion (parity and gate must pass)")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="skip the metric gate (never parity); needs --reason")
    promote.add_argument("--reason", default="", help="why: recorded on the version")
    _common(promote)
    rollback = sub.add_parser("rollback", help="make the previous champion the champion again")
    rollback.add_argument("--reason", default="", help="why: recorded on the rolled-back version")
    _common(rollback)
    export = sub.add_parser("export", help="write a version's ONNX model to a file")
    export.add_argument("version", help="version number, alias (champion) or models:/ URI")
    export.add_argument("--out", type=Path, required=True, help="where to write the .onnx file")
    _common(export)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    from anomalymatch.config import load_config
    from anomalymatch.model_ref import resolve_tracking_uri

    config = load_config(args.config, {"data_dir": args.data_dir})
    uri = resolve_tracking_uri(args.tracking_uri or config.tracking.tracking_uri, config.data_path)
    return uri, args.name or config.tracking.registered_model


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"  # noqa: PLR0124 (NaN check)


def format_versions(versions) -> str:
    """The `registry list` table."""
    header = (
        "VERSION",
        "ALIASES",
        "PARITY",
        "GATE",
        "VS",
        "AUPRC",
        "P@TOP",
        "HOLDOUT",
        "LABELS",
        "ANOM",
        "CAMPAIGN",
        "CYCLE",
        "CREATED",
    )
    rows = [header]
    for v in versions:
        hold = v.holdout
        rows.append(
            (
                v.version,
                ",".join(v.aliases) or "-",
                v.parity,
                v.gate,
                v.tags.get("gate_vs") or "-",
                _fmt(hold.get("auprc")),
                _fmt(hold.get("precision_at_top")),
                f"{v.tags.get('n_holdout', '-')}",
                v.tags.get("n_labels", "-"),
                v.tags.get("n_anomalies", "-"),
                v.tags.get("campaign", "-"),
                v.tags.get("cycle", "-"),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created / 1000)),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_version(v) -> str:
    """The `registry show` text."""
    lines = [
        f"{v.name} version {v.version}",
        f"  aliases: {', '.join(v.aliases) or '-'}",
        f"  run: {v.run_id}",
        f"  source: {v.source}",
        f"  created: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v.created / 1000))}",
    ]
    for key in sorted(v.tags):
        value = v.tags[key]
        if key in ("metrics", "gate_detail"):
            try:
                value = json.dumps(json.loads(value), sort_keys=True)
            except ValueError:
                pass
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from anomalymatch.model_ref import resolve_model
    from registry.lock import LockTimeout
    from registry.promote import PromotionError, promote_to_champion, rollback_champion
    from registry.store import list_versions, show_version

    uri, name = _target(args)
    cmd = args.registry_command
    try:
        if cmd == "list":
            versions = list_versions(uri, name)
            if not versions:
                print(f"no versions of '{name}' in {uri}; `anomalymatch train` or `anomalymatch demo` registers them")
                return 0
            print(format_versions(versions))
        elif cmd == "show":
            print(format_version(show_version(args.version, uri, name)))
        elif cmd == "promote":
            move = promote_to_champion(args.version, uri, name, force=args.force, reason=args.reason)
            if move.changed:
                print(
                    f"{name} version {move.champion} is now champion (previous: {move.previous or '-'})"
                    + (f"; forced: {args.reason}" if args.force else "")
                )
            else:
                print(f"{name} version {move.champion} is already champion")
        elif cmd == "rollback":
            move = rollback_champion(uri, name, reason=args.reason)
            print(
                f"{name} champion rolled back from version {move.replaced or '-'} to {move.champion} "
                f"(previous: {move.previous or '-'})"
            )
        elif cmd == "export":
            with tempfile.TemporaryDirectory(prefix="anomalymatch-export-") as tmp:
                resolved = resolve_model(args.version, uri, cache_dir=tmp, registered_model=name)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(resolved.path, args.out)
            print(f"wrote {args.out} ({name} version {resolved.version})")
    except (PromotionError, LookupError, LockTimeout, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:  # anything else the registry refuses: its message, not a traceback
        print(f"error: the MLflow registry at {uri} refused: {exc.message}", file=sys.stderr)
        return 1
    return 0

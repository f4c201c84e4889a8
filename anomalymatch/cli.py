"""The ``anomalymatch`` command line. Each verb's work lives in its own module, imported lazily so
that ``anomalymatch inspect`` never pays for torch or mlflow."""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, function, one-line help). The module defines ``add_arguments(parser)`` too.
VERBS: dict[str, tuple[str, str]] = {
    "inspect": ("anomalymatch.inspect", "Count and check images in folders, zips, HDF5 files or FITS files"),
    "train": ("training.cli_train", "Train a FixMatch campaign on labelled images plus an unlabelled pool"),
    "benchmark": ("training.cli_benchmark", "Run the paper's active-learning benchmark protocol"),
    "demo": (
        "loop.demo",
        "The main job: the whole labelling loop (train, promote, serve, label, retrain) on FIRST radio galaxies",
    ),
    "registry": ("registry.cli", "Model versions: list, show, promote, rollback, export ONNX"),
    "serve": ("serving.cli_serve", "Run the scoring service (BentoML, ONNX Runtime) on the champion model"),
    "score": ("serving.cli_score", "Score folders, zips or HDF5 files to resumable Parquet shards + top candidates"),
    "retrain": (
        "training.cli_retrain",
        "Retrain the champion when new labels arrive (--watch), register, gate, promote",
    ),
    "coldstart": (
        "training.cli_coldstart",
        "A campaign's first ranking with no labelled anomaly: outlierness, or similarity to example images",
    ),
    "label": ("labeling.cli", "Pull candidates to label and push labels to the service; retraining status"),
    "catalogue": ("anomalymatch.cli_catalogue", "Attach a survey catalogue (id, ra, dec, columns) to the campaign"),
    "similar": ("anomalymatch.cli_similar", "The images most like one image, by the model's stored features"),
    "users": ("anomalymatch.cli_users", "People who may use the service: add (prints a token), list, remove"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalymatch",
        description="Find rare objects in image archives with semi-supervised active learning.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise  # a bug: keep the traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors about the user's input (files, labels, sources, the label store): one line, exit code 1."""
    from anomalymatch.errors import DecodeError, SourceError, TrainingInputError
    from anomalymatch.labels import LabelError
    from anomalymatch.labelstore import LabelStoreError

    return (LabelError, LabelStoreError, SourceError, DecodeError, TrainingInputError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())

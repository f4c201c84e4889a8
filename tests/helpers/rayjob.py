"""deploy/rayjob.yaml as the tests read it: the parsed RayJob and its entrypoint as an argv list."""

from __future__ import annotations

import shlex
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_rayjob() -> dict:
    import yaml

    return yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())


def entrypoint_argv() -> list[str]:
    return shlex.split(load_rayjob()["spec"]["entrypoint"])


def with_options(argv: list[str], values: dict[str, list[str]]) -> list[str]:
    """``argv`` with each option in ``values`` given those values instead (the other options kept as they are)."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg in values
            if skipping:
                continue
        elif skipping:
            continue
        out.append(arg)
    for option, vals in values.items():
        out += [option, *vals]
    return out

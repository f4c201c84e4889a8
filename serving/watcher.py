"""The retrain watcher beside the service (``retrain.in_service``): ``start_watcher`` runs
``anomalymatch retrain --watch`` as a child process, so the service process itself never imports torch;
``stop_watcher`` ends it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from anomalymatch.config import AppConfig
from anomalymatch.retrain_state import state_path


def start_watcher(config: AppConfig, log_path: str | os.PathLike | None = None) -> subprocess.Popen:
    """``anomalymatch retrain --watch`` with this config as a child process that stops when its parent
    does. Its log goes to ``<data_dir>/retrain/watcher.log``."""
    folder = state_path(config.data_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "watcher-config.json"  # JSON is YAML: ``--config`` reads it
    config_file.write_text(json.dumps(config.to_dict(), indent=1))
    log_file = Path(log_path) if log_path else folder / "watcher.log"
    command = [
        sys.executable,
        "-m",
        "anomalymatch.cli",
        "retrain",
        "--watch",
        "--config",
        str(config_file),
        "--parent-pid",
        str(os.getpid()),
    ]
    with log_file.open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop_watcher(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (a retrain in flight is abandoned; the champion is untouched), SIGKILL after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

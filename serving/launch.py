"""Start and stop ``bentoml serve`` for the AnomalyMatch service as a subprocess.

The resolved ``AppConfig`` travels to the service process as JSON in ``ANOMALYMATCH_CONFIG_JSON``
(the service reads it at import, because BentoML's batching and traffic settings are class
decorators). ``start_service`` is what the main job, the benchmarks and the integration tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anomalymatch.config import AppConfig, config_from_dict

CONFIG_ENV = "ANOMALYMATCH_CONFIG_JSON"
SERVICE_TARGET = "serving.service:AnomalyMatchService"


def config_to_env(config: AppConfig) -> dict[str, str]:
    return {CONFIG_ENV: json.dumps(config.to_dict())}


def config_from_env() -> AppConfig:
    """The config the launcher passed, else defaults (``ANOMALYMATCH_HOME`` honoured)."""
    raw = os.environ.get(CONFIG_ENV)
    if raw:
        return config_from_dict(json.loads(raw))
    from anomalymatch.config import load_config

    return load_config()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bentoml_command(config: AppConfig) -> list[str]:
    exe = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    base = [exe] if exe else [sys.executable, "-m", "bentoml"]
    return [*base, "serve", SERVICE_TARGET, "--host", config.serving.host, "--port", str(config.serving.port)]


def service_env(config: AppConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(config_to_env(config))
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


@dataclass
class RunningService:
    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: requests in flight finish), then SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        try:  # BentoML may leave worker processes in the group: end them too
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return int(self.process.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll ``/readyz`` until 200; ``RuntimeError`` if the process exits or time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the service at {url} was not ready after {timeout:.0f} s")


@contextmanager
def start_service(
    config: AppConfig,
    model: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[RunningService]:
    """Run the service (``config.serving``; port 0 = a free one) until the block ends, then stop it.

    ``model`` overrides ``config.serving.model`` (a models:/ URI, a version number or an .onnx file).
    ``with start_service(config) as svc: rows = score_arrays(svc.url, ids, images)``. The service log goes
    to ``log_path`` (default ``<data_dir>/serve.log``); ``svc.log()`` reads it.
    """
    from dataclasses import replace

    serving = config.serving if model is None else replace(config.serving, model=str(model))
    if serving.port == 0:
        serving = replace(serving, port=free_port(serving.host))
    config = config.replace(serving=serving)
    log_file = Path(log_path) if log_path else config.data_path / "serve.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            bentoml_command(config),
            env=service_env(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = RunningService(process, f"http://{serving.host}:{serving.port}", log_file)
    try:
        try:
            wait_ready(service.url, process, ready_timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; service log ({log_file}):\n{service.log()[-4000:]}") from None
        yield service
    finally:
        service.stop()

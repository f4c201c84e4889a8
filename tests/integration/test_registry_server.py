"""The registry against a real ``mlflow server`` (SQLite database backend, proxied artifacts): register
with ONNX export and parity, gate-driven promotion, concurrent promotions through the lock, rollback,
and ``mlflow.onnx.load_model("models:/anomalymatch@champion")`` over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalymatch.config import RegistryConfig
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.scoring import VERSION_KEY
from registry import ImageSet, list_versions, promote_to_champion, register_cycle, resolve_model, rollback_champion
from registry.parity import score_torch
from tests.helpers.images import encode_png, gradient_rgb
from tests.helpers.labelstore import POSTGRES_URL, wipe_postgres

pytestmark = pytest.mark.slow

SPEC = PreprocessSpec(size=32)
NAME = "anomalymatch"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["sqlite"] + (["postgresql"] if POSTGRES_URL else []))
def server(request, tmp_path_factory):
    """A real ``mlflow server``, on a SQLite backend store and (when a test PostgreSQL is given) on PostgreSQL."""
    root = tmp_path_factory.mktemp("mlflow_server")
    backend = wipe_postgres(POSTGRES_URL) if request.param == "postgresql" else f"sqlite:///{root / 'mlflow.db'}"
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log_text = (root / "server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited ({proc.returncode}): {log_text}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from anomalymatch.loader import load_images

    folder = tmp_path_factory.mktemp("server_images")
    for i in range(24):
        img = gradient_rgb(40, 40, seed=100 + i)
        if i % 4 == 0:
            img[8:32, 8:32] = 250
        (folder / f"s{i:02d}.png").write_bytes(encode_png(img))
    loaded = load_images(folder, SPEC, workers=1)
    return ImageSet(loaded.images, np.asarray(loaded.ids, dtype=object))


def _model(seed):
    from training.model import create_model

    torch.manual_seed(seed)
    return create_model(SPEC, pretrained=False).eval()


def test_register_promote_rollback_against_mlflow_server(server, images, tmp_path, monkeypatch):
    import mlflow
    import mlflow.onnx

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: OpenMP contention costs more than it gives
    try:
        client = mlflow.MlflowClient(server, registry_uri=server)
        exp = client.create_experiment("server-test")
        idx = np.arange(len(images.ids))
        pool, holdout_imgs = images.subset(idx < 12), images.subset((idx >= 12) & (idx < 20))
        train_ids = images.ids[20:]
        train = ImageSet(None, train_ids, np.array([1, 0, 0, 0]))
        m0, m1 = _model(0), _model(1)
        s1 = score_torch(m1, holdout_imgs.images)
        y = np.zeros(len(s1), dtype=np.int64)
        y[np.argsort(-s1)[:2]] = 1  # labels model 1 ranks perfectly
        holdout = ImageSet(holdout_imgs.images, holdout_imgs.ids, y)
        cfg = RegistryConfig(parity_top_k=12)
        regs = []
        for cycle, model in ((1, m0), (2, m1)):
            run_id = client.create_run(exp).info.run_id
            regs.append(
                register_cycle(
                    model,
                    run_id,
                    {"campaign": "srv", "cycle": cycle, "parent_version": regs[-1].version if regs else ""},
                    pool,
                    holdout,
                    train,
                    tracking_uri=server,
                    name=NAME,
                    cfg=cfg,
                )
            )
            client.set_terminated(run_id)
    finally:
        torch.set_num_threads(before)
    v1, v2 = regs
    assert v1.parity.passed and v2.parity.passed and v1.parity.max_abs_diff <= 1e-4
    assert v1.promotion is not None and v2.gate.decision.value == "passed" and v2.promotion is not None
    aliases = client.get_registered_model(NAME).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "2", "previous": "1", "challenger": "2"}
    tags = client.get_model_version(NAME, "2").tags
    assert tags["parent_version"] == "1" and tags["gate_vs"] == "1" and len(tags["labels_sha256"]) == 64

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    proto = mlflow.onnx.load_model(f"models:/{NAME}@champion")
    assert {p.key: p.value for p in proto.metadata_props}[VERSION_KEY] == f"{NAME}/2"
    resolved = resolve_model("champion", server, tmp_path / "dl", NAME)
    path, version = resolved.path, resolved.version
    assert version == "2" and path.is_file()

    # concurrent promotions through the server: one champion, an unbroken replaced_version chain
    src = client.get_model_version(NAME, "1")
    clones = [str(client.create_model_version(NAME, src.source, src.run_id, tags=src.tags).version) for _ in range(4)]
    errors = []

    def promote(v):
        try:
            promote_to_champion(v, server, NAME, force=True, reason=f"race {v}")
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=promote, args=(v,)) for v in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    champion = str(client.get_registered_model(NAME).aliases["champion"])
    chain, v = [], champion
    while v in clones:
        chain.append(v)
        v = client.get_model_version(NAME, v).tags["replaced_version"]
    assert sorted(chain) == sorted(clones) and v == "2"

    # roll back step by step to the gate-promoted version
    for _ in range(4):
        rollback_champion(server, NAME)
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "2"
    move = rollback_champion(server, NAME, reason="back to the first model")
    assert move.champion == "1" and move.previous == ""
    listed = {v.version: v for v in list_versions(server, NAME)}
    assert "champion" in listed["1"].aliases and listed["2"].parity == "passed"

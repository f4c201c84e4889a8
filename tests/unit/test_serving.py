"""Serving pieces without a server: model references against a real SQLite registry, hot reload,
upload validation (each bad input gets its 4xx), adaptive batching, and the torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from anomalymatch.loader import load_images
from anomalymatch.model_ref import parse_model_ref, resolve_model
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.scoring import OnnxScorer
from serving.batching import AdaptiveBatcher
from serving.live_model import LiveModel
from serving.uploads import RequestError, UploadLimits, decode_upload, decode_uploads, upload_id
from tests.helpers.images import encode_fits, encode_jpeg, encode_png, gradient_rgb
from tests.helpers.serving import shared_registry

SPEC = PreprocessSpec(size=32)
LIMITS = UploadLimits(max_images=5, max_bytes=200_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return shared_registry(tmp_path_factory)


def test_parse_model_ref_accepts_aliases_versions_and_files(tmp_path):
    assert parse_model_ref("models:/anomalymatch@champion").alias == "champion"
    ref = parse_model_ref("models:/other/7")
    assert (ref.name, ref.version, ref.is_alias) == ("other", "7", False)
    assert parse_model_ref("3", registered_model="mine").name == "mine"
    onnx = tmp_path / "m" / "model.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"x")
    assert parse_model_ref(str(onnx.parent)).path == str(onnx)  # an MLflow model folder works too
    with pytest.raises(ValueError, match="models:/<name>@<alias>"):
        parse_model_ref("models:/anomalymatch")
    with pytest.raises(ValueError, match="neither"):
        parse_model_ref(str(tmp_path / "missing.onnx"))


def test_served_scorers_do_not_spin_and_score_the_same(registry):
    from serving.live_model import load_scorer

    def spinning(scorer):
        try:
            return scorer.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ONNX Runtime's default, which spins
            return "default"

    path = registry.onnx_paths["1"]
    served = load_scorer(path, "1").scorer
    default = OnnxScorer(path)
    assert spinning(served) == "0" and spinning(default) == "default"
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(served.score(pixels), default.score(pixels))


def test_alias_resolves_to_its_version_and_the_registered_file(registry, tmp_path):
    resolved = resolve_model("models:/anomalymatch@champion", registry.tracking_uri, tmp_path / "cache")
    assert resolved.version == "1"
    pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        OnnxScorer(resolved.path).score(pixels), OnnxScorer(registry.onnx_paths["1"]).score(pixels), atol=1e-6
    )
    assert resolve_model("2", registry.tracking_uri, tmp_path / "cache").version == "2"
    with pytest.raises(LookupError, match="nosuch"):
        resolve_model("models:/anomalymatch@nosuch", registry.tracking_uri, tmp_path / "cache")


def test_hot_reload_swaps_atomically_and_old_model_keeps_working(registry, tmp_path):
    from mlflow import MlflowClient

    reg, client = registry, MlflowClient(registry.tracking_uri)
    client.set_registered_model_alias("anomalymatch", "unit-reload", "1")  # its own alias: champion stays put
    live = LiveModel("models:/anomalymatch@unit-reload", reg.tracking_uri, tmp_path / "cache", reload_interval_s=0.2)
    try:
        before = live.current
        assert before.version == "1" and "CPUExecutionProvider" in before.info()["providers"]
        assert live.reload_if_moved() is False
        client.set_registered_model_alias("anomalymatch", "unit-reload", "2")
        deadline = time.monotonic() + 20
        while live.current.version != "2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.current.version == "2" and live.reload_error == ""
        pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        v1 = OnnxScorer(reg.onnx_paths["1"]).score(pixels)
        np.testing.assert_allclose(before.scorer.score(pixels), v1, atol=1e-6)  # in-flight requests hold v1
        np.testing.assert_allclose(
            live.current.scorer.score(pixels), OnnxScorer(reg.onnx_paths["2"]).score(pixels), atol=1e-6
        )
    finally:
        live.close()


def test_upload_ids_are_the_client_file_names():
    assert upload_id(Path("/tmp/req/tmpab3_x9z0galaxy 1.png")) == "galaxy 1.png"


def test_good_uploads_decode_like_the_loader(image_dir):
    names = ["rgb.png", "photo.jpg", "tiff/u16_3ch.tif", "fits/sky.fits", "fits/sky.fits.gz"]
    files = [(n, (image_dir / n).read_bytes) for n in names]
    pixels = decode_uploads(files, SPEC, LIMITS)
    expected = load_images(image_dir, SPEC, ids=names, workers=1)
    assert pixels.shape == (5, 32, 32, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected.images)


@pytest.mark.parametrize(
    "name,data,status,words",
    [
        ("notes.png", b"just some text, not an image", 415, "not an image"),
        ("empty.png", b"", 415, "empty"),
        ("zipped.fits.gz", __import__("gzip").compress(b"not fits inside"), 415, "not an image"),
        ("corrupt.png", encode_png(gradient_rgb())[:60], 422, "png decode failed"),
        ("truncated.jpg", encode_jpeg(gradient_rgb(64, 64))[:300], 422, "jpeg"),
        ("line.fits", encode_fits(np.arange(50, dtype=np.float32)), 422, "cannot use this image"),
        ("huge.png", encode_png(np.zeros((1100, 1000, 3), np.uint8)), 413, "too large"),
        (
            "big_file.png",
            encode_png(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)),
            413,
            "file too large",
        ),
    ],
)
def test_each_bad_upload_gets_its_4xx_with_a_clear_message(name, data, status, words):
    with pytest.raises(RequestError) as err:
        decode_upload(name, data, SPEC, LIMITS)
    assert err.value.status == status
    assert words in err.value.message.lower() and name in err.value.message


def test_request_level_limits_and_every_bad_file_is_named():
    good = encode_png(gradient_rgb())
    with pytest.raises(RequestError) as err:
        decode_uploads([], SPEC, LIMITS)
    assert err.value.status == 400
    with pytest.raises(RequestError) as err:
        decode_uploads([(f"{i}.png", lambda: good) for i in range(6)], SPEC, LIMITS)
    assert err.value.status == 413 and "too many images" in err.value.message
    with pytest.raises(RequestError) as err:
        decode_uploads([("a.png", lambda: good), ("b.txt", lambda: b"hello"), ("c.png", lambda: b"")], SPEC, LIMITS)
    assert err.value.status == 415 and [d["id"] for d in err.value.detail] == ["b.txt", "c.png"]
    json.dumps(err.value.body())


def _slow_double(key, pixels):
    time.sleep(0.05)
    return pixels.reshape(len(pixels), -1)[:, 0].astype(np.float32) * 2 + (100 if key == "b" else 0)


def test_batcher_merges_concurrent_requests_and_returns_each_its_own_scores():
    batcher = AdaptiveBatcher(_slow_double, max_batch_size=64, max_latency_ms=500)
    results: dict[int, np.ndarray] = {}

    def request(i: int) -> None:
        with batcher.expect():
            time.sleep(0.01 * (i % 3))  # "decoding"
            pixels = np.full((2, 1, 1, 3), i, np.uint8)
            future = batcher.submit("a", pixels)
        results[i] = future.result(timeout=10)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i in range(16):
        np.testing.assert_array_equal(results[i], [2 * i, 2 * i])
    assert sum(batcher.batch_sizes) == 32 and max(batcher.batch_sizes) > 2  # requests were merged
    assert len(batcher.batch_sizes) < 16


def test_batcher_does_not_wait_for_a_lone_request_nor_mix_models():
    batcher = AdaptiveBatcher(_slow_double, max_batch_size=8, max_latency_ms=5000)
    start = time.monotonic()
    out = batcher.submit("a", np.ones((1, 1, 1, 3), np.uint8)).result(timeout=10)
    assert time.monotonic() - start < 1.0 and out.tolist() == [2.0]  # nobody else expected: no 5 s wait
    futures = [batcher.submit(key, np.ones((n, 1, 1, 3), np.uint8)) for key, n in [("a", 3), ("b", 3), ("a", 20)]]
    assert futures[1].result(timeout=10).tolist() == [102.0] * 3  # scored by model "b" only
    assert futures[2].result(timeout=10).tolist() == [2.0] * 20  # larger than max_batch_size: runs alone
    batcher.close()


def test_batcher_reports_a_failed_batch_to_its_requests():
    def boom(key, pixels):
        raise RuntimeError("device lost")

    batcher = AdaptiveBatcher(boom, max_batch_size=8, max_latency_ms=1)
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.submit("a", np.ones((1, 1, 1, 3), np.uint8)).result(timeout=10)
    batcher.close()


def test_service_and_serving_modules_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "import serving.service, serving.bulk, serving.client, serving.cli_serve, serving.cli_score, serving.jobs\n"
        "import mlflow, mlflow.artifacts, onnxruntime, bentoml\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "assert serving.service.AnomalyMatchService is not None\n"
        "print('ok')\n"
    )
    env = {
        "ANOMALYMATCH_HOME": str(tmp_path),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_request_size_limit_refuses_large_bodies_with_413_chunked_or_not():
    import asyncio

    from serving.uploads import RequestSizeLimit

    async def echo(scope, receive, send):  # the wrapped app: answers with the body it read
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def call(chunks, headers=()):
        sent, queue = (
            [],
            [{"type": "http.request", "body": c, "more_body": k < len(chunks) - 1} for k, c in enumerate(chunks)],
        )

        async def receive():
            return queue.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": list(headers)}
        asyncio.run(RequestSizeLimit(echo, max_bytes=10)(scope, receive, send))
        return sent[0]["status"], sent[1]["body"]

    assert call([b"abc", b"defg"]) == (200, b"abcdefg")  # chunked, within the limit: passed on whole
    status, body = call([b"abcdef", b"ghijkl", b"never read"])
    assert status == 413 and b"request too large" in body
    assert call([b"x" * 11], headers=[(b"content-length", b"11")])[0] == 413
    assert call([b"x" * 10], headers=[(b"content-length", b"10")]) == (200, b"x" * 10)


def test_multipart_parts_under_another_field_or_with_overlong_names_are_400():
    from serving.uploads import RequestError, check_multipart

    def body(*parts):
        out = b""
        for name, filename in parts:
            out += (
                b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
                b"Content-Type: image/png\r\n\r\n\x89PNG...\r\n"
            )
        return out + b"--XyZ--\r\n"

    check_multipart(body((b"images", b"a.png"), (b"images", b"b.png")), b"XyZ", "images", 200)
    with pytest.raises(RequestError, match="unknown multipart field 'image'") as other:
        check_multipart(body((b"images", b"a.png"), (b"image", b"b.png")), b"XyZ", "images", 200)
    with pytest.raises(RequestError, match=r"file name too long \(204 characters > 200\)") as long_name:
        check_multipart(
            body(
                (b"images", b"x" * 200 + b".png"),
            ),
            b"XyZ",
            "images",
            200,
        )
    assert other.value.status == long_name.value.status == 400
    reordered = (
        b"--XyZ\r\nContent-Disposition: form-data; filename*=UTF-8''" + b"y" * 230 + b".png; name=images\r\n\r\n"
        b"\x89PNG\r\n--XyZ--\r\n"
    )
    with pytest.raises(RequestError, match="file name too long"):  # parameters in any order, RFC 2231 form
        check_multipart(reordered, b"XyZ", "images", 200)

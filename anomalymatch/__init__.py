"""AnomalyMatch shared core: image decoding and sources, the preprocessing contract, labels,
metrics and config. Imports no torch, mlflow or bentoml."""
from anomalymatch.preprocessing import FitsStretch, Interpolation, PreprocessSpec

__version__ = "0.1.0"

__all__ = ["FitsStretch", "Interpolation", "PreprocessSpec", "__version__"]

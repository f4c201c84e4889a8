"""The one preprocessing contract shared by training, export, serving and labelling.

Decoding produces uint8 HWC arrays at the model size (``anomalymatch.decode`` and ``.transform``); everything
after that (scaling to [0, 1], mean/std normalisation) happens inside the model, so the spec
below travels with every model version and nobody retypes mean/std.

Multi-band data (``band_matrix``, ``band_stretch``): how N survey bands become the model's 3 channels is
part of the spec too, so it travels into the ONNX metadata and serving combines bands exactly as training
did (``anomalymatch.bands``). Both fields default to None and are then left out of ``to_dict``/``to_json``,
so a spec without bands serialises (and hashes) exactly as it did before they existed.

Test-time views (``views``): the model's score and embedding can be the average over the flips ("flips": 4
views) or all 8 symmetries of the square ("d4": the flips and their transposes) of each input. That is part of
the model (the exported graph computes every view), so it lives here and travels the same way; "plain" (one
view, the default) is left out of ``to_dict`` like the band fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Interpolation(str, Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    AREA = "area"  # Pillow's BOX filter: best for strong down-scaling


class FitsStretch(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ASINH = "asinh"
    LOG = "log"
    ZSCALE = "zscale"


def band_matrix_hint(bands: int) -> str:
    """How to configure the combination of ``bands`` bands (for errors about N-band input)."""
    rows = [[0] * bands for _ in range(3)]
    for row, band in zip(rows, (bands - 1, bands // 2, 0)):  # R = the last band, G the middle, B the first
        row[band] = 1
    example = ", ".join("[" + ", ".join(map(str, row)) + "]" for row in rows)
    return (
        f"to map {bands} bands to the model's 3 channels set preprocess.band_matrix, 3 rows (R, G, B) of {bands} "
        f"weights, in the config file (e.g. band_matrix: [{example}]) or with `anomalymatch train "
        f'--band-matrix "{"; ".join(",".join(map(str, row)) for row in rows)}"`, and train a model with it'
    )


#: How many views of each input the model averages, per ``PreprocessSpec.views``.
VIEW_COUNTS = {"plain": 1, "flips": 4, "d4": 8}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw image becomes the model's uint8 input, and how the model normalises it.

    size: output is ``size x size`` pixels, 3 channels (greyscale is repeated, alpha dropped).
    crop: keep a centred square of side ``crop * min(H, W)`` before resizing (1.0 = the largest
          centred square; square images are kept whole).
    mean/std: applied inside the model to pixels scaled to [0, 1].
    fits_stretch: the display stretch for measurement data (FITS, float and wide-integer arrays).
    band_matrix: None, or 3 rows (R, G, B) of N weights each: every input is then a stack of N bands
          (FITS cube planes, multi-extension FITS image HDUs, HDF5/TIFF channels), each stretched to
          [0, 1] by its ``band_stretch``, and channel c = clip(sum_n band_matrix[c][n] * band_n). YAML
          takes a list of 3 lists; a string ``"r1,r2,...; g1,...; b1,..."`` works too (command lines).
    band_stretch: None (every band uses ``fits_stretch``), one stretch for every band, or one per band
          (N names); only with ``band_matrix``.
    views: "plain", or the model's score and embedding averaged over each input's 4 flips ("flips") or all 8
          symmetries of the square ("d4"), for data without a preferred orientation (sky images); costs
          that many forward passes per image when scoring, none more when training.
    """

    size: int = 64
    crop: float = 1.0
    interpolation: Interpolation = Interpolation.AREA
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channels: int = 3
    fits_stretch: FitsStretch = FitsStretch.ASINH
    band_matrix: tuple[tuple[float, ...], ...] | None = None
    band_stretch: tuple[FitsStretch, ...] | None = None
    views: str = "plain"  # test-time views averaged by the model: "plain", "flips" (4) or "d4" (8)

    def __post_init__(self) -> None:
        if self.views not in VIEW_COUNTS:
            raise ValueError(f"PreprocessSpec.views must be one of {sorted(VIEW_COUNTS)}, got {self.views!r}")
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"PreprocessSpec.size must be an integer >= 8, got {self.size!r}")
        if not 0.0 < float(self.crop) <= 1.0:
            raise ValueError(f"PreprocessSpec.crop must be in (0, 1], got {self.crop!r}")
        if self.channels != 3:
            raise ValueError("PreprocessSpec.channels must be 3 (the pretrained backbone is RGB)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("PreprocessSpec.mean/std need 3 values each, std > 0")
        object.__setattr__(self, "interpolation", Interpolation(self.interpolation))
        object.__setattr__(self, "fits_stretch", FitsStretch(self.fits_stretch))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop", float(self.crop))
        matrix = _band_matrix(self.band_matrix)
        object.__setattr__(self, "band_matrix", matrix)
        object.__setattr__(self, "band_stretch", _band_stretch(self.band_stretch, matrix))

    @property
    def bands(self) -> int | None:
        """How many bands every input must have (the matrix width), or None without a band matrix."""
        return len(self.band_matrix[0]) if self.band_matrix is not None else None

    def band_stretches(self) -> tuple[FitsStretch, ...]:
        """The stretch of each of the ``bands`` bands (``band_stretch`` broadcast, else ``fits_stretch``)."""
        if self.band_matrix is None:
            raise ValueError("this spec has no band_matrix, so no per-band stretches")
        stretches = self.band_stretch or (self.fits_stretch,)
        return stretches * len(self.band_matrix[0]) if len(stretches) == 1 else stretches

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interpolation"] = self.interpolation.value
        d["fits_stretch"] = self.fits_stretch.value
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        for key in ("band_matrix", "band_stretch"):
            if d[key] is None:
                del d[key]  # a spec without bands serialises as it did before bands existed
        if self.views == "plain":
            del d["views"]  # likewise a spec with one view
        if self.band_matrix is not None:
            d["band_matrix"] = [list(row) for row in self.band_matrix]
        if self.band_stretch is not None:
            d["band_stretch"] = [s.value for s in self.band_stretch]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls.from_dict(json.loads(text))


def _band_matrix(value: Any) -> tuple[tuple[float, ...], ...] | None:
    """``band_matrix`` as 3 equal-length tuples of finite floats (from lists, tuples or ``"a,b; c,d; e,f"``)."""
    if value is None:
        return None
    how = (
        "give 3 rows (R, G, B) of one weight per input band, e.g. for 5 bands "
        "preprocess.band_matrix: [[0, 0, 0, 0.5, 1], [0, 0.5, 1, 0.5, 0], [1, 0.5, 0, 0, 0]]"
    )
    if isinstance(value, str):
        value = [[part for part in row.replace(",", " ").split()] for row in value.split(";")]
    if not isinstance(value, Sequence) or not all(isinstance(r, Sequence) and not isinstance(r, str) for r in value):
        raise ValueError(f"preprocess.band_matrix must be a list of 3 lists, got {value!r}; {how}")
    if len(value) != 3:
        raise ValueError(f"preprocess.band_matrix has {len(value)} rows, needs 3; {how}")
    widths = [len(row) for row in value]
    if len(set(widths)) != 1 or widths[0] < 1:
        raise ValueError(f"preprocess.band_matrix rows have {widths} weights; every row needs one per band; {how}")
    try:
        matrix = tuple(tuple(float(v) for v in row) for row in value)
    except (TypeError, ValueError):
        raise ValueError(f"preprocess.band_matrix holds a non-number: {value!r}; {how}") from None
    if not all(math.isfinite(v) for row in matrix for v in row):
        raise ValueError(f"preprocess.band_matrix holds NaN or infinity: {value!r}; {how}")
    return matrix


def _band_stretch(value: Any, matrix: tuple[tuple[float, ...], ...] | None) -> tuple[FitsStretch, ...] | None:
    """``band_stretch`` as a tuple of 1 or N stretches (N = the matrix width), from a name or a list."""
    if value is None:
        return None
    if matrix is None:
        raise ValueError(
            "preprocess.band_stretch needs preprocess.band_matrix (it stretches the bands the matrix combines); "
            "set the matrix, or use preprocess.fits_stretch for 1-4 channel images"
        )
    names = [value] if isinstance(value, (str, FitsStretch)) else list(value)
    valid = [s.value for s in FitsStretch]
    try:
        stretches = tuple(FitsStretch(name) for name in names)
    except ValueError:
        raise ValueError(f"preprocess.band_stretch {names} holds an unknown stretch; use {valid}") from None
    bands = len(matrix[0])
    if len(stretches) not in (1, bands):
        raise ValueError(
            f"preprocess.band_stretch has {len(stretches)} stretches for {bands} bands (the band_matrix width): "
            "give one for every band, or one name for all"
        )
    return stretches

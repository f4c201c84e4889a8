"""The one preprocessing contract shared by training, export, serving and labelling.

Decoding produces uint8 HWC arrays at the model size (``anomalymatch.decode`` and ``.transform``); everything
after that (scaling to [0, 1], mean/std normalisation) happens inside the model, so the spec
below travels with every model version and nobody retypes mean/std.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum


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


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw image becomes the model's uint8 input, and how the model normalises it.

    size: output is ``size x size`` pixels, 3 channels (greyscale is repeated, alpha dropped).
    crop: keep a centred square of side ``crop * min(H, W)`` before resizing (1.0 = the largest
          centred square; square images are kept whole).
    mean/std: applied inside the model to pixels scaled to [0, 1].
    """

    size: int = 64
    crop: float = 1.0
    interpolation: Interpolation = Interpolation.AREA
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channels: int = 3
    fits_stretch: FitsStretch = FitsStretch.ASINH

    def __post_init__(self) -> None:
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interpolation"] = self.interpolation.value
        d["fits_stretch"] = self.fits_stretch.value
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
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

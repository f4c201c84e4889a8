"""The band matrix and per-band stretches travel with the model: PreprocessSpec validation and JSON, the config
(YAML, dotted overrides, the logged config), the exported ONNX model's metadata, and the service and bulk
decode of multi-band files with the model's spec giving the training decode's pixels (real GZ1 bands)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalymatch.config import load_config
from anomalymatch.preprocessing import FitsStretch, PreprocessSpec
from tests.helpers.bands import GZ1_ZIP, fits_cube, fits_mef, gz1_bands, write_hdf5

MATRIX = ((0.0, 0.0, 0.0, 0.5, 1.0), (0.0, 1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.8, 0.4, 0.0))
STRETCHES = ("asinh", "asinh", "percentile", "log", "minmax")


def test_spec_without_bands_serialises_as_before() -> None:
    legacy = (
        '{"channels": 3, "crop": 1.0, "fits_stretch": "asinh", "interpolation": "area", '
        '"mean": [0.5, 0.5, 0.5], "size": 64, "std": [0.5, 0.5, 0.5]}'
    )
    assert PreprocessSpec().to_json() == legacy  # model metadata, bulk manifests and config hashes unchanged
    assert PreprocessSpec.from_json(legacy) == PreprocessSpec() and PreprocessSpec().bands is None


def test_spec_with_bands_round_trips_through_json() -> None:
    spec = PreprocessSpec(size=48, band_matrix=MATRIX, band_stretch=STRETCHES)
    data = json.loads(spec.to_json())
    assert data["band_matrix"] == [list(row) for row in MATRIX] and data["band_stretch"] == list(STRETCHES)
    back = PreprocessSpec.from_json(spec.to_json())
    assert back == spec and hash(back) == hash(spec) and back.bands == 5
    assert back.band_stretches()[3] is FitsStretch.LOG
    text = PreprocessSpec(size=48, band_matrix="0,0,0,.5,1; 0 1 0 0 0; 0,0,.8,.4,0", band_stretch=STRETCHES)
    assert text == spec  # the command-line form
    one = PreprocessSpec(band_matrix=MATRIX, band_stretch="log")
    assert one.band_stretches() == (FitsStretch.LOG,) * 5
    assert PreprocessSpec(band_matrix=MATRIX, fits_stretch="zscale").band_stretches() == (FitsStretch.ZSCALE,) * 5


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"band_matrix": MATRIX[:2]}, "has 2 rows, needs 3"),
        ({"band_matrix": (MATRIX[0], MATRIX[1], MATRIX[2][:4])}, r"rows have \[5, 5, 4\] weights"),
        ({"band_matrix": ((1, 0), (0, float("nan")), (0, 1))}, "NaN or infinity"),
        ({"band_matrix": ((1, "x"), (0, 1), (0, 1))}, "non-number"),
        ({"band_matrix": MATRIX, "band_stretch": ("asinh", "log")}, "2 stretches for 5 bands"),
        ({"band_matrix": MATRIX, "band_stretch": "sqrt"}, "unknown stretch"),
        ({"band_stretch": "log"}, "band_stretch needs preprocess.band_matrix"),
    ],
)
def test_bad_band_settings_say_what_to_give(kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        PreprocessSpec(**kwargs)


def test_config_sets_the_bands_from_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "survey.yaml"
    path.write_text(
        "preprocess:\n  size: 48\n"
        "  band_matrix: [[0, 0, 0, 0.5, 1], [0, 1, 0, 0, 0], [0, 0, 0.8, 0.4, 0]]\n"
        "  band_stretch: [asinh, asinh, percentile, log, minmax]\n"
    )
    config = load_config(path)
    assert config.preprocess == PreprocessSpec(size=48, band_matrix=MATRIX, band_stretch=STRETCHES)
    assert load_config(None, config.to_dict()) == config  # the logged config reads back as itself
    assert config.config_hash() != load_config(None, {"preprocess.size": 48}).config_hash()
    override = load_config(path, {"preprocess.band_matrix": "1 0 0 0 0; 0 1 0 0 0; 0 0 1 0 0"})
    assert override.preprocess.band_matrix[0] == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert "band_matrix" not in load_config().to_dict()["preprocess"]
    with pytest.raises(ValueError, match="has 2 rows"):
        load_config(None, {"preprocess.band_matrix": [[1, 0], [0, 1]]})


@pytest.fixture(scope="module")
def band_model(tmp_path_factory, one_torch_thread):
    """A tiny real model trained-to-be at a 5-band spec, exported to ONNX."""
    import torch

    from registry.onnx_export import export_onnx
    from training.model import create_model

    spec = PreprocessSpec(size=32, band_matrix=MATRIX, band_stretch=STRETCHES)
    torch.manual_seed(0)
    return export_onnx(create_model(spec, pretrained=False).eval(), tmp_path_factory.mktemp("band_model") / "m.onnx")


@pytest.mark.skipif(not GZ1_ZIP.is_file(), reason=f"shared GZ1 data not found at {GZ1_ZIP}")
def test_service_and_bulk_decode_multiband_files_like_training(band_model, tmp_path) -> None:
    import onnx

    from anomalymatch.loader import iter_batches, load_images
    from anomalymatch.scoring import SPEC_KEY, OnnxScorer
    from anomalymatch.sources import open_source
    from serving.uploads import RequestError, UploadLimits, decode_uploads

    trained = PreprocessSpec(size=32, band_matrix=MATRIX, band_stretch=STRETCHES)  # the training config's spec
    meta = {p.key: p.value for p in onnx.load(str(band_model)).metadata_props}
    assert PreprocessSpec.from_json(meta[SPEC_KEY]) == trained
    scorer = OnnxScorer(band_model)
    assert scorer.spec == trained and scorer.spec.bands == 5

    stacks = gz1_bands(3)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i, bands in enumerate(stacks):  # one galaxy as a cube, the others as multi-extension files
        (folder / f"gal_{i}.fits").write_bytes(fits_cube(bands) if i == 0 else fits_mef(list(bands)))
    h5 = write_hdf5(tmp_path / "cutouts.h5", stacks)

    training = load_images(folder, trained, workers=1)  # what assemble_training_input decodes
    assert training.ids == ["gal_0.fits", "gal_1.fits", "gal_2.fits"] and not training.report
    uploads = [(name, (folder / name).read_bytes) for name in training.ids]
    limits = UploadLimits(max_images=8, max_bytes=1 << 22, max_pixels=1 << 20)
    np.testing.assert_array_equal(decode_uploads(uploads, scorer.spec, limits), training.images)
    bulk = np.concatenate([b.images for b in iter_batches(open_source(h5), scorer.spec, batch_size=2, workers=1)])
    np.testing.assert_array_equal(bulk, training.images)  # the bulk job's reader, on the HDF5 copy of the bands
    np.testing.assert_array_equal(scorer.score(bulk), scorer.score(training.images))

    plain = PreprocessSpec(size=32)  # a model trained without a matrix refuses the 5-band upload clearly
    with pytest.raises(RequestError, match=r"5 bands .*preprocess.band_matrix") as info:
        decode_uploads(uploads[:1], plain, limits)
    assert info.value.status == 422

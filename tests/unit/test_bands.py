"""Multi-band input on real GZ1 bands: a FITS cube, a multi-extension FITS file and an HDF5 (N, H, W, 5) array
of the same bands decode to the same pixels; a selecting matrix reproduces the 3-channel decode; per-band
stretches, weights, NaN, and the errors for a wrong band count, no matrix, unequal extensions."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from anomalymatch.bands import combine_bands
from anomalymatch.decode import decode_image
from anomalymatch.errors import DecodeError
from anomalymatch.fits import clean_nonfinite, stretch_plane
from anomalymatch.loader import load_item
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.sources import open_source
from anomalymatch.transform import to_model_size
from tests.helpers.bands import GZ1_ZIP, fits_cube, fits_mef, gz1_bands, gz1_jpeg, write_hdf5

pytestmark = pytest.mark.skipif(not GZ1_ZIP.is_file(), reason=f"shared GZ1 data not found at {GZ1_ZIP}")

# R: the reddest (G - R) plus half the mean; G: G; B: B and a little of the mean (weights sum past 1: clipping)
MATRIX = ((0.0, 0.0, 0.0, 0.5, 1.0), (0.0, 1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.8, 0.4, 0.0))
SPEC = PreprocessSpec(size=32, band_matrix=MATRIX, band_stretch=("asinh", "asinh", "percentile", "log", "minmax"))


@pytest.fixture(scope="module")
def stacks() -> list[np.ndarray]:
    return gz1_bands(3)


@pytest.fixture(scope="module")
def hdf5(stacks, tmp_path_factory):
    return open_source(write_hdf5(tmp_path_factory.mktemp("bands") / "bands.h5", stacks))


def test_cube_mef_and_hdf5_of_the_same_bands_decode_identically(stacks, hdf5) -> None:
    assert hdf5.ids == ["gal_0", "gal_1", "gal_2"] and hdf5.read_at(0).shape == (96, 96, 5)
    for i, bands in enumerate(stacks):
        cube = decode_image(fits_cube(bands), "g.fits", SPEC)
        assert cube.shape == (32, 32, 3) and cube.dtype == np.uint8
        assert np.array_equal(decode_image(fits_mef(list(bands)), "g.fits", SPEC), cube)
        assert np.array_equal(decode_image(gzip.compress(fits_cube(bands)), "g.fits.gz", SPEC), cube)
        assert np.array_equal(load_item(hdf5, i, SPEC), cube)
        assert all(cube[..., c].std() > 5 for c in range(3))  # a galaxy in every channel, not a blank frame
    other = PreprocessSpec(size=32, band_matrix=(MATRIX[2], MATRIX[1], MATRIX[0]), band_stretch=SPEC.band_stretch)
    assert not np.array_equal(load_item(hdf5, 0, other), load_item(hdf5, 0, SPEC))  # the matrix decides


def test_channel_first_hdf5_reads_the_same_bands(stacks, tmp_path) -> None:
    chw = open_source(write_hdf5(tmp_path / "chw.h5", stacks, channel_first=True))
    assert chw.read_at(1).shape == (96, 96, 5)
    assert np.array_equal(load_item(chw, 1, SPEC), decode_image(fits_cube(stacks[1]), "g.fits", SPEC))


def test_a_selecting_matrix_reproduces_the_three_channel_decode(stacks, tmp_path) -> None:
    pick = (4, 0, 3)  # G - R, R, mean: bands that are measurements (float), so the plain decode stretches them
    rows = tuple(tuple(1.0 if n == k else 0.0 for n in range(5)) for k in pick)
    spec = PreprocessSpec(size=40, crop=0.8, interpolation="bicubic")
    with_matrix = PreprocessSpec(size=40, crop=0.8, interpolation="bicubic", band_matrix=rows)
    three = open_source(write_hdf5(tmp_path / "three.h5", [s[list(pick)] for s in stacks]))
    for i, bands in enumerate(stacks):
        expected = decode_image(fits_cube(bands[list(pick)]), "three.fits", spec)  # today's 3-plane FITS path
        assert np.array_equal(decode_image(fits_cube(bands), "five.fits", with_matrix), expected)
        assert np.array_equal(to_model_size(three.read_at(i), spec), expected)  # today's HDF5 float path
    stretches = PreprocessSpec(size=40, band_matrix=((0, 0, 0, 0, 1),) * 3, band_stretch=["asinh"] * 4 + ["log"])
    grey_log = decode_image(fits_cube(stacks[0][4]), "b4.fits", PreprocessSpec(size=40, fits_stretch="log"))
    assert np.array_equal(decode_image(fits_cube(stacks[0]), "five.fits", stretches), grey_log)  # band 4's own
    grey_asinh = decode_image(fits_cube(stacks[0][4]), "b4.fits", PreprocessSpec(size=40))
    assert not np.array_equal(grey_log, grey_asinh)


def test_weights_add_stretched_bands_and_clip(stacks) -> None:
    bands = np.moveaxis(stacks[0], 0, 2)
    spec = PreprocessSpec(size=32, band_matrix=((0.5, 0.5, 0, 0, 0), (1, -1, 0, 0, 0), (0, 0, 0, 0, 0)))
    out = combine_bands(bands, spec).astype(int)
    r, g = stretch_plane(bands[..., 0]).astype(int), stretch_plane(bands[..., 1]).astype(int)
    assert np.abs(out[..., 0] - (r + g) / 2).max() <= 1  # quantised once, after the sum
    assert np.abs(out[..., 1] - np.clip(r - g, 0, 255)).max() <= 1 and (out[..., 1] == 0).mean() > 0.05
    assert not out[..., 2].any()


def test_nan_pixels_are_handled_like_fits_nan(stacks) -> None:
    bands = stacks[0].copy()
    bands[2, :10, :10] = np.nan
    bands[2, 50, 50] = np.inf
    cleaned = bands.copy()
    cleaned[2] = clean_nonfinite(bands[2])  # NaN -> the band's finite minimum, +inf -> its maximum
    assert np.array_equal(decode_image(fits_cube(bands), "n.fits", SPEC), decode_image(fits_cube(cleaned), "", SPEC))


def test_a_band_without_data_is_refused_only_when_used(stacks) -> None:
    bands = stacks[0].copy()
    bands[1] = np.nan
    with pytest.raises(DecodeError, match=r"band 1 of 5 has no finite value.*column 1 is zero"):
        decode_image(fits_cube(bands), "n.fits", SPEC)
    unused = PreprocessSpec(size=32, band_matrix=tuple((*row[:1], 0.0, *row[2:]) for row in MATRIX))
    assert decode_image(fits_cube(bands), "n.fits", unused).std() > 0


def test_band_count_mismatch_names_both_counts(stacks, hdf5) -> None:
    four = PreprocessSpec(size=32, band_matrix=tuple(row[:4] for row in MATRIX))
    for decode in (
        lambda: decode_image(fits_cube(stacks[0]), "g.fits", four),
        lambda: decode_image(fits_mef(list(stacks[0])), "g.fits", four),
        lambda: load_item(hdf5, 0, four),
    ):
        with pytest.raises(DecodeError, match=r"has 5 band\(s\) but preprocess.band_matrix combines 4"):
            decode()
    png = PreprocessSpec(size=32, band_matrix=MATRIX)
    with pytest.raises(DecodeError, match=r"has 3 band\(s\) but preprocess.band_matrix combines 5"):
        decode_image(gz1_jpeg(), "g.jpeg", png)  # a colour JPEG's channels are 3 bands


def test_many_bands_without_a_matrix_say_how_to_configure_one(stacks, hdf5) -> None:
    how = r"5 bands .* preprocess.band_matrix, 3 rows \(R, G, B\) of 5 weights.*--band-matrix"
    with pytest.raises(DecodeError, match=how):
        decode_image(fits_cube(stacks[0]), "g.fits", PreprocessSpec(size=32))
    with pytest.raises(DecodeError, match=how):
        load_item(hdf5, 0, PreprocessSpec(size=32))
    # one band still needs no matrix: grey, as before
    grey = decode_image(fits_cube(stacks[0][:1]), "g.fits", PreprocessSpec(size=32))
    assert np.array_equal(grey[..., 0], grey[..., 2]) and grey.std() > 0


def test_unequal_extensions_are_refused_with_both_shapes(stacks) -> None:
    planes = list(stacks[0])
    planes[3] = planes[3][:90]
    with pytest.raises(DecodeError, match=r"HDU 4 has shape \(90, 96\), HDU 1 has \(96, 96\).*same shape"):
        decode_image(fits_mef(planes), "g.fits", SPEC)
    with pytest.raises(DecodeError, match=r"HDU 2 holds a cube of shape \(96, 96, 2\)"):
        decode_image(fits_mef([planes[0], stacks[0][1:3], *planes[3:]]), "g.fits", SPEC)

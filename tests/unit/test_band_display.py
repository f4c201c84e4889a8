"""Multi-band images are shown as the campaign's model sees them: the band_matrix combination at the
image's own resolution (web app thumbnails, the detail view, ``/image?png``), for FITS cubes and HDF5 rows."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anomalymatch.bands import combine_bands
from anomalymatch.campaign_images import ImageLibrary, setup_campaign
from anomalymatch.labelstore import LabelStore
from anomalymatch.preprocessing import PreprocessSpec
from tests.helpers.bands import GZ1_ZIP, SIDE, fits_cube, gz1_bands, write_hdf5

MATRIX = ((0, 0, 0.5, 0.5, 0), (0, 1, 0, 0, 0), (1, 0, 0, 0, 0.5))
SPEC = PreprocessSpec(size=32, band_matrix=MATRIX, band_stretch="asinh")


@pytest.fixture(scope="module")
def stacks():
    if not GZ1_ZIP.exists():
        pytest.skip("shared GZ1 data not found")
    return gz1_bands(2)


def test_a_cube_and_an_hdf5_row_show_as_the_combined_bands(tmp_path, stacks) -> None:
    (tmp_path / "cubes").mkdir()
    (tmp_path / "cubes" / "gal.fits").write_bytes(fits_cube(stacks[0]))
    h5 = write_hdf5(tmp_path / "bands.h5", stacks)
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    setup_campaign(store, "cubes", [tmp_path / "cubes"], SPEC)
    setup_campaign(store, "h5", [h5], SPEC)
    library = ImageLibrary(store)
    expected = combine_bands(np.moveaxis(stacks[0], 0, 2), SPEC)
    shown = library.read_display("gal.fits")
    assert shown.shape == (SIDE, SIDE, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown, expected)
    assert np.array_equal(library.read_display("gal_0"), expected)  # the same bands from the HDF5 row
    png = library.read("gal.fits", render_png=True)
    assert png.media_type == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.data))), expected)
    library.close()

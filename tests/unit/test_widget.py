"""The labelling widget's display transform (plain numpy) and what it decodes for display."""

from __future__ import annotations

import io

import numpy as np
import pytest

from anomalymatch.display import STRETCHES, adjust_image, display_data, to_png
from tests.helpers.images import encode_png, gradient_rgb


def test_every_stretch_gives_rgb_uint8_and_keeps_the_order_of_brightness():
    ramp = np.linspace(0.0, 1000.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    for stretch in STRETCHES:
        out = adjust_image(ramp, stretch)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        grey = out[..., 0].ravel().astype(int)
        assert np.all(np.diff(grey) >= 0), stretch  # brighter input never shows darker
        assert grey[0] == 0 and grey[-1] == 255, stretch
    # log and asinh lift faint structure above the linear stretch
    assert (
        adjust_image(ramp, "log")[32, 0, 0]
        > adjust_image(ramp, "asinh")[32, 0, 0]
        > adjust_image(ramp, "linear")[32, 0, 0]
    )


def test_brightness_contrast_invert_and_channels():
    img = gradient_rgb(16, 16, seed=3)
    base = adjust_image(img).astype(int)
    assert (adjust_image(img, brightness=0.2).astype(int) >= base).all()
    assert (adjust_image(img, brightness=-1.0) == 0).all()
    flat = adjust_image(img, contrast=0.1).astype(int)
    assert np.ptp(flat) < np.ptp(base)  # low contrast pulls everything towards mid-grey
    assert np.array_equal(adjust_image(img, invert=True).astype(int), 255 - base)
    only_red = adjust_image(img, channels=(True, False, False))
    assert (only_red[..., 1:] == 0).all() and np.array_equal(only_red[..., 0], base[..., 0])


def test_nan_in_measurements_and_bad_arguments():
    data = np.arange(100, dtype=np.float64).reshape(10, 10)
    data[2, 3] = np.nan
    out = adjust_image(data, "zscale")
    assert out.shape == (10, 10, 3) and out[2, 3, 0] == 0  # NaN shows as the lowest value
    with pytest.raises(ValueError, match="unknown stretch 'sqrt'"):
        adjust_image(data, "sqrt")
    with pytest.raises(ValueError, match="three on/off values"):
        adjust_image(data, channels=(True,))
    with pytest.raises(ValueError, match="shape"):
        adjust_image(np.zeros((2, 2, 2, 2)))


def test_display_data_keeps_fits_measurements_and_decodes_other_files():
    from astropy.io import fits

    values = np.linspace(-5.0, 5e4, 12 * 10, dtype=np.float32).reshape(12, 10)
    buf = io.BytesIO()
    fits.PrimaryHDU(values).writeto(buf)
    raw = display_data(buf.getvalue(), "a.fits")
    assert raw.dtype.kind == "f" and np.allclose(raw, values)  # values, not a stretched uint8
    img = gradient_rgb(9, 7, seed=1)
    assert np.array_equal(display_data(encode_png(img), "b.png"), img)
    png = to_png(adjust_image(values, "asinh"))
    assert np.array_equal(display_data(png, "c.png").shape, (12, 10, 3))

"""Decoding every file kind to uint8 RGB, FITS stretches, and the JPEG draft fast path."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from anomalymatch.decode import decode_image, decode_native, probe_image
from anomalymatch.errors import DecodeError
from anomalymatch.fits import clean_nonfinite, stretch_plane, stretch_to_uint8
from anomalymatch.preprocessing import FitsStretch, Interpolation, PreprocessSpec
from anomalymatch.transform import crop_box, to_model_size
from tests.helpers.images import (
    BROKEN_EXPECTED,
    SYNTH,
    encode_jpeg,
    encode_png,
    fits_bomb_gz,
    gradient_rgb,
    valid_files,
)

H, W = SYNTH["rgb"].shape[:2]


@pytest.mark.parametrize("rel", sorted(valid_files()))
def test_every_kind_decodes_to_model_size(image_dir, rel):
    data = (image_dir / rel).read_bytes()
    out = decode_image(data, rel, PreprocessSpec(size=16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    native = decode_native(data, rel)
    assert native.shape == (H, W, 3) and native.dtype == np.uint8
    assert native.std() > 0  # real content, not a blank frame


def test_png_pixels_are_exact(image_dir):
    assert np.array_equal(decode_native((image_dir / "rgb.png").read_bytes()), SYNTH["rgb"])
    grey = decode_native((image_dir / "grey.png").read_bytes())
    assert np.array_equal(grey, np.repeat(SYNTH["grey"][..., None], 3, axis=2))
    rgba = decode_native((image_dir / "rgba.png").read_bytes())
    assert np.array_equal(rgba, SYNTH["rgb"])  # alpha dropped, colour untouched


@pytest.mark.parametrize("rel", ["tiff/u8_3ch.tif", "tiff/u8_4ch.tiff"])
def test_tiff_8bit_colour_is_exact(image_dir, rel):
    assert np.array_equal(decode_native((image_dir / rel).read_bytes()), SYNTH["rgb"])


def test_tiff_1_and_2_channels_become_grey(image_dir):
    expected = np.repeat(SYNTH["grey"][..., None], 3, axis=2)
    assert np.array_equal(decode_native((image_dir / "tiff/u8_1ch.tif").read_bytes()), expected)
    la = decode_native((image_dir / "tiff/u8_2ch.tif").read_bytes())
    assert np.array_equal(la, np.repeat(SYNTH["la"][..., :1], 3, axis=2))


@pytest.mark.parametrize("rel", ["tiff/u16_1ch.tif", "grey16.png"])
def test_16bit_gradient_maps_by_full_range_and_monotonically(image_dir, rel):
    out = decode_native((image_dir / rel).read_bytes())[..., 0].astype(int)
    row = out[0]
    assert np.all(np.diff(row) >= 0) and row[0] == 0 and row[-1] == 255
    expected = np.rint(SYNTH["grey16"][0].astype(float) * 255 / 65535)
    assert np.abs(row - expected).max() <= 1


def test_16bit_planar_tiff_matches_interleaved(image_dir):
    a = decode_native((image_dir / "tiff/u16_3ch.tif").read_bytes())
    b = decode_native((image_dir / "tiff/u16_3ch_planar.tif").read_bytes())
    assert np.array_equal(a, b)
    assert np.all(np.diff(a[0, :, 0].astype(int)) >= 0) and np.all(np.diff(a[0, :, 1].astype(int)) <= 0)
    assert a[0, 0, 2] == round(30000 * 255 / 65535)


def test_fits_nonfinite_pixels_become_finite_and_star_is_brightest(image_dir):
    out = decode_native((image_dir / "fits/sky.fits").read_bytes(), fits_stretch="minmax")[..., 0]
    assert out[20, 24] == 255  # the star
    assert out[0, 0] == 0 and out[0, 2] == 0  # NaN and -inf -> lowest finite value
    assert out[0, 1] == 255  # +inf -> highest finite value


def test_fits_gz_radio_and_plain_agree(image_dir):
    plain = decode_native((image_dir / "fits/sky.fits").read_bytes())
    assert np.array_equal(decode_native((image_dir / "fits/sky.fits.gz").read_bytes()), plain)
    assert np.array_equal(decode_native((image_dir / "fits/radio.fit").read_bytes()), plain)


def test_fits_cube_planes_become_channels(image_dir):
    out = decode_native((image_dir / "fits/cube.fits").read_bytes(), fits_stretch="minmax").astype(int)
    assert np.all(np.diff(out[5, :, 0]) >= 0) and out[5, 0, 0] == 0 and out[5, -1, 0] == 255  # along x
    assert np.all(np.diff(out[:, 5, 1]) >= 0) and out[0, 5, 1] == 0 and out[-1, 5, 1] == 255  # along y
    assert set(np.unique(out[..., 2])) == {0, 255}  # two-level third plane


@pytest.mark.parametrize("method", list(FitsStretch))
def test_each_stretch_is_uint8_and_monotonic(method):
    rng = np.random.default_rng(0)
    plane = rng.lognormal(3.0, 1.5, (32, 32)).astype(np.float32)
    plane[3, 4] = np.nan
    out = stretch_plane(plane, method)
    assert out.dtype == np.uint8 and out.shape == plane.shape
    clean = clean_nonfinite(plane).ravel()
    order = np.argsort(clean, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)
    assert out.max() > out.min()


def test_stretch_edge_cases():
    assert not stretch_plane(np.full((5, 5), 3.0)).any()
    assert not stretch_plane(np.full((5, 5), np.nan)).any()
    three = stretch_to_uint8(np.stack([np.arange(9.0).reshape(3, 3), -np.arange(9.0).reshape(3, 3)], 2), "minmax")
    assert three[0, 0, 0] == 0 and three[0, 0, 1] == 255  # each channel has its own limits


@pytest.mark.parametrize(
    "name, data, word",
    [
        (
            "corrupt.png",
            np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes(),
            "unknown image format",
        ),
        ("empty.jpg", b"", "empty"),
        ("note.png", b"hello world", "named like png"),
        ("trunc.jpg", encode_jpeg(gradient_rgb(64, 64))[:400], "jpeg decode failed"),
        ("trunc.png", encode_png(gradient_rgb(64, 64))[:300], "png decode failed"),
    ],
)
def test_bad_bytes_raise_decode_error_with_reason(name, data, word):
    with pytest.raises(DecodeError) as info:
        decode_image(data, name, PreprocessSpec(size=16))
    assert word in info.value.reason


def test_broken_fixture_reasons_are_documented():
    assert {"corrupt.png", "truncated.jpg", "empty.png", "notes.txt"} <= set(BROKEN_EXPECTED)


@pytest.mark.parametrize("crop", [1.0, 0.5])
def test_jpeg_draft_path_stays_close_to_full_decode(crop):
    data = encode_jpeg(gradient_rgb(256, 256, seed=2), quality=90)
    spec = PreprocessSpec(size=32, crop=crop)
    fast = decode_image(data, "x.jpg", spec).astype(int)
    full = decode_image(data, "x.jpg", spec, draft=False).astype(int)
    diff = np.abs(fast - full)
    assert diff.mean() > 0  # the DCT-domain path was really taken (it is not bit-identical)
    assert diff.mean() < 1.5 and diff.max() < 24


def test_decode_image_equals_native_then_resize(image_dir):
    spec = PreprocessSpec(size=20, crop=0.7, interpolation="bilinear")
    for rel in ["rgb.png", "tiff/u16_3ch.tif", "fits/cube.fits"]:
        data = (image_dir / rel).read_bytes()
        assert np.array_equal(decode_image(data, rel, spec), to_model_size(decode_native(data, rel), spec)), rel


def test_centre_crop_keeps_the_centre_square():
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:30, 20:40] = 200  # centre square, half the shorter side
    assert crop_box(60, 40, 0.5) == (20, 10, 40, 30)
    for interpolation in Interpolation:
        out = to_model_size(image, PreprocessSpec(size=8, crop=0.5, interpolation=interpolation))
        assert np.all(out == 200), interpolation


def test_to_model_size_dtype_and_layout_policies():
    spec = PreprocessSpec(size=8)
    grey16 = np.full((16, 16), 65535, np.uint16)
    assert np.all(to_model_size(grey16, spec) == 255)
    chw = np.zeros((3, 16, 16), np.uint8)
    chw[0] = 255
    out = to_model_size(chw, spec)
    assert np.all(out[..., 0] == 255) and not out[..., 1:].any()
    floats = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), (16, 1))
    assert np.all(np.diff(to_model_size(floats, spec)[0, :, 0].astype(int)) >= 0)
    assert np.all(to_model_size(np.ones((16, 16), bool), spec) == 255)
    with pytest.raises(DecodeError, match="1-4 channels"):
        to_model_size(np.zeros((16, 16, 6), np.uint8), spec)
    with pytest.raises(DecodeError, match="image array"):
        to_model_size(np.zeros(16, np.uint8), spec)


def test_probe_reports_native_shape_and_dtype(image_dir):
    cases = {
        "photo.jpg": ("jpeg", (H, W, 3), "uint8"),
        "grey16.png": ("png", (H, W), "uint16"),
        "tiff/u16_3ch_planar.tif": ("tiff", (H, W, 3), "uint16"),
        "fits/cube.fits": ("fits", (H, W, 3), "float32"),
        "fits/sky.fits.gz": ("fits", (H, W), "float32"),
    }
    for rel, (fmt, shape, dtype) in cases.items():
        info = probe_image((image_dir / rel).read_bytes(), rel)
        assert (info.format, info.shape, info.dtype) == (fmt, shape, dtype), rel


def test_gzip_members_truncation_and_bombs_are_handled():
    from anomalymatch.decode import _gunzip

    payload = bytes(range(256)) * 64
    assert _gunzip(gzip.compress(payload)) == payload
    assert _gunzip(gzip.compress(payload) + gzip.compress(b"tail")) == payload + b"tail"  # two members
    with pytest.raises(DecodeError, match="truncated"):
        _gunzip(gzip.compress(payload)[:-40])
    bomb = gzip.compress(b"\0" * (4 << 20))  # 4 MiB of zeros in about 4 KiB
    with pytest.raises(DecodeError, match="inflates to more than 1048576 bytes"):
        _gunzip(bomb, limit=1 << 20)
    assert len(_gunzip(bomb, limit=4 << 20)) == 4 << 20


def test_a_gzipped_fits_declaring_too_many_pixels_is_refused_before_inflating():
    from anomalymatch.decode import _gunzip, fits_declared, probe_image

    bomb = fits_bomb_gz(20000, 20000)  # declares 1.6 GB of float32; ships 8 MiB of zeros in about 8 KiB
    assert len(bomb) < 64 << 10
    assert fits_declared(gzip.decompress(bomb)[:2880]) == (400_000_000, 1_600_000_000, 2880)
    with pytest.raises(DecodeError, match="declares 400000000 pixels"):
        probe_image(bomb, "bomb.fits.gz", max_pixels=64_000_000)
    # within the pixel budget, inflation stops at the size the header declares (plus one step)
    small = fits_bomb_gz(100, 100, zero_bytes=8 << 20)
    with pytest.raises(DecodeError, match="inflates to more than"):
        _gunzip(small, max_pixels=64_000_000)
    honest = fits_bomb_gz(64, 32, zero_bytes=0)
    assert len(_gunzip(honest, max_pixels=10_000)) == 2880  # header only: the data is cut, reported by FITS


def test_the_bomb_guard_has_no_side_doors():
    """An empty first gzip member, non-FITS content, a cube within the per-plane limit, an absurd NAXIS:
    all refused before much is inflated; an image in a FITS extension (empty primary HDU) still decodes."""
    import io

    from astropy.io import fits

    from anomalymatch.decode import _gunzip, probe_image
    from anomalymatch.errors import ImageTooLargeError

    bomb = fits_bomb_gz(20000, 20000)
    with pytest.raises(ImageTooLargeError):
        _gunzip(gzip.compress(b"") + bomb, max_pixels=64_000_000)  # the check waits for the header
    with pytest.raises(DecodeError, match=r"only FITS \(.fits.gz\)"):
        _gunzip(gzip.compress(encode_png(gradient_rgb(8, 8))), max_pixels=64_000_000)
    assert len(_gunzip(gzip.compress(b"x" * 100))) == 100  # without a pixel budget (training, bulk): any gzip
    cube = "".join(
        c.ljust(80)
        for c in (
            "SIMPLE  = T",
            "BITPIX  = -32",
            "NAXIS   = 3",
            "NAXIS1  = 1000",
            "NAXIS2  = 1000",
            "NAXIS3  = 268",
            "END",
        )
    )
    with pytest.raises(ImageTooLargeError, match="1072000000 bytes of data"):
        _gunzip(gzip.compress(cube.ljust(2880).encode() + bytes(1 << 20)), max_pixels=1_000_000)
    absurd = "".join(c.ljust(80) for c in ("SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 3000000000", "END"))
    with pytest.raises(DecodeError, match="malformed FITS header"):
        _gunzip(gzip.compress(absurd.ljust(2880).encode()), max_pixels=1_000_000)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((1024, 1024), np.float32))]).writeto(buf)
    info = probe_image(gzip.compress(buf.getvalue()), "mef.fits.gz", max_pixels=64_000_000)
    assert info.shape == (1024, 1024)


def test_a_jpeg_compressed_tiff_falls_back_to_pillow_for_rgb_and_bands():
    """tifffile cannot decode JPEG-in-TIFF without imagecodecs; Pillow can, for both decode paths."""
    import io

    from PIL import Image

    from anomalymatch.decode import decode_image, decode_native

    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 255, (5, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # smooth: JPEG-friendly
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="TIFF", compression="jpeg")
    data = buf.getvalue()
    native = decode_native(data, "x.tif")
    assert native.shape == (40, 40, 3) and np.abs(native.astype(int) - pixels).mean() < 8
    selecting = PreprocessSpec(size=40, band_matrix=((1, 0, 0), (0, 1, 0), (0, 0, 1)), band_stretch="minmax")
    assert decode_image(data, "x.tif", selecting).shape == (40, 40, 3)

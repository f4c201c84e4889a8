"""Sources (folder, zip, HDF5, single file, concatenation) and the streaming loader."""

from __future__ import annotations

import csv
import pickle
import zipfile

import numpy as np
import pytest

from anomalymatch.decode import decode_image
from anomalymatch.loader import SkipReport, iter_batches, load_images
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.sources import SourceError, open_source, open_sources
from anomalymatch.transform import to_model_size
from tests.helpers.images import BROKEN_EXPECTED, encode_png, gradient_rgb, valid_files

SPEC = PreprocessSpec(size=16)


def test_folder_ids_are_sorted_relative_posix_paths(image_dir):
    source = open_source(image_dir)
    assert source.ids == sorted(valid_files())
    assert "nested/deeper/rgb_copy.png" in source.ids and source.unsupported == []
    assert source.read("rgb.png") == (image_dir / "rgb.png").read_bytes()


def test_zip_and_folder_give_identical_ids_and_arrays(image_dir, image_zip):
    folder = load_images(open_source(image_dir), SPEC, workers=2)
    archive = load_images(image_zip, SPEC, workers=2)
    assert archive.ids == folder.ids == sorted(valid_files())
    assert np.array_equal(archive.images, folder.images)
    assert len(folder.report) == 0 and len(archive.report) == 0


def test_batches_preserve_order_ids_and_size(image_dir):
    source = open_source(image_dir)
    serial = load_images(source, SPEC, workers=0)
    stream = iter_batches(source, SPEC, batch_size=4, workers=3)
    batches = list(stream)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    assert [i for b in batches for i in b.ids] == source.ids
    assert np.array_equal(np.concatenate([b.images for b in batches]), serial.images)
    assert all(b.images.shape[1:] == (16, 16, 3) and b.images.dtype == np.uint8 for b in batches)
    assert len(stream.report) == 0


def test_broken_files_are_reported_not_raised(broken_dir, tmp_path):
    report = SkipReport()
    batches = list(iter_batches(open_source(broken_dir), SPEC, batch_size=8, workers=2, report=report))
    assert [i for b in batches for i in b.ids] == ["good_a.png", "sub/good_b.png"]
    reasons = dict(report.items)
    for entry, word in BROKEN_EXPECTED.items():
        assert word in reasons[entry], (entry, reasons.get(entry))
    assert len(report) == len(BROKEN_EXPECTED)
    assert "truncated.jpg" in report.summary(limit=50) and f"{len(report)} skipped" in report.summary()
    report.to_csv(tmp_path / "skipped.csv")
    with (tmp_path / "skipped.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == set(BROKEN_EXPECTED)


def test_ids_subset_keeps_given_order_and_reports_unknown(image_dir):
    source = open_source(image_dir)
    wanted = ["tiff/u8_3ch.tif", "rgb.png", "missing.png", "photo.jpg"]
    result = load_images(source, SPEC, ids=wanted, workers=2)
    assert result.ids == ["tiff/u8_3ch.tif", "rgb.png", "photo.jpg"]
    assert np.array_equal(result.images[0], result.images[1])  # same pixels in both files
    assert result.report.items == [("missing.png", f"id not found in source {source.name}")]


def test_hdf5_raw_uint8_with_ids(hdf5_files):
    fx = hdf5_files["raw_u8"]
    source = open_source(fx.path)
    assert source.ids == fx.ids and source.kind == "hdf5"
    native = load_images(source, PreprocessSpec(size=20, crop=1.0), workers=2)  # 24x20 -> centre 20x20
    assert np.array_equal(native.images, np.stack([row[2:22] for row in fx.images]))
    assert np.array_equal(load_images(source, SPEC).images[3], to_model_size(fx.images[3], SPEC))


def test_hdf5_raw_uint16_without_ids_uses_row_numbers(hdf5_files):
    fx = hdf5_files["raw_u16"]
    result = load_images(fx.path, SPEC, workers=2)
    assert result.ids == [str(i) for i in range(len(fx.images))]
    expected = to_model_size(np.rint(fx.images[0] / 257).astype(np.uint8), SPEC)
    assert np.array_equal(result.images[0], expected)


def test_hdf5_float_channel_first_in_a_group(hdf5_files):
    fx = hdf5_files["raw_f32_chw"]
    source = open_source(fx.path)
    assert source.ids == fx.ids
    row = source.read_at(0)
    assert row.shape == (24, 20, 3)
    assert np.array_equal(load_images(source, SPEC).images[0], to_model_size(np.moveaxis(fx.images[0], 0, 2), SPEC))


@pytest.mark.parametrize("key", ["encoded", "opaque"])
def test_hdf5_encoded_bytes_decode_and_report_the_corrupt_row(hdf5_files, key):
    fx = hdf5_files[key]
    result = load_images(fx.path, SPEC, workers=2)
    assert result.ids == [i for n, i in enumerate(fx.ids) if n != 3]
    assert [i for i, _ in result.report.items] == [fx.ids[3]]
    assert "unknown image format" in result.report.items[0][1]
    assert np.array_equal(result.images[1], decode_image(fx.images[1], "x", SPEC))


def test_hdf5_dataset_names_can_be_given_and_errors_are_clear(hdf5_files, tmp_path):
    import h5py

    fx = hdf5_files["raw_u8"]
    assert open_source(fx.path, images="images", ids=False).ids[:2] == ["0", "1"]
    with pytest.raises(SourceError, match="no dataset 'nope'"):
        open_source(fx.path, images="nope")
    with pytest.raises(SourceError, match="not an image|expected"):
        open_source(fx.path, images="labels")
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros((2, 8, 8), np.uint8)
        f["b"] = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(SourceError, match="images=NAME"):
        open_source(path)
    assert len(open_source(path, images="b")) == 2
    with h5py.File(tmp_path / "masked.h5", "w") as f:  # cutouts beside a 6-plane mask cube: the cutouts
        f["cutouts_g"] = np.zeros((2, 8, 8, 3), np.uint8)
        f["mask"] = np.zeros((2, 8, 8, 6), np.uint8)
    assert open_source(tmp_path / "masked.h5").images_dataset == "cutouts_g"


def test_hdf5_duplicate_ids_are_rejected(tmp_path):
    import h5py

    path = tmp_path / "dupes.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((3, 8, 8), np.uint8)
        f["ids"] = np.array([b"a", b"b", b"a"])
    with pytest.raises(SourceError, match="repeats ids"):
        open_source(path)


def test_duplicate_ids_across_sources_are_rejected(image_dir, image_zip):
    with pytest.raises(SourceError, match="'fits/cube.fits' is in both"):
        open_sources([image_dir, image_zip])
    both = open_sources([open_source(image_dir, prefix="dir/"), open_source(image_zip, prefix="zip/")])
    assert len(both) == 2 * len(valid_files())
    assert both.read("zip/rgb.png") == both.read("dir/rgb.png")
    result = load_images(both, SPEC, ids=["zip/photo.jpg", "dir/grey.png"], workers=2)
    assert result.ids == ["zip/photo.jpg", "dir/grey.png"]


def test_single_file_source_and_missing_path(image_dir, corrupt_file, tmp_path):
    source = open_source(image_dir / "fits" / "cube.fits")
    assert source.ids == ["cube.fits"] and len(load_images(source, SPEC).ids) == 1
    result = load_images(corrupt_file, SPEC)
    assert result.ids == [] and result.images.shape == (0, 16, 16, 3) and len(result.report) == 1
    with pytest.raises(SourceError, match="not found"):
        open_source(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="not an image source"):
        open_source(tmp_path / "notes.txt")


def test_zip_member_with_bad_crc_is_reported(tmp_path):
    good, bad = encode_png(gradient_rgb(seed=1)), encode_png(gradient_rgb(seed=2))
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", good)
        zf.writestr("b.png", bad)
        zf.writestr("readme.md", "hi")
    raw = bytearray(path.read_bytes())
    at = raw.find(bad[100:120])
    raw[at] ^= 0xFF  # flip a byte inside b.png's stored data
    path.write_bytes(bytes(raw))
    result = load_images(path, SPEC, workers=2)
    assert result.ids == ["a.png"]
    reasons = dict(result.report.items)
    assert "CRC" in reasons["b.png"] and "unsupported file type .md" in reasons["readme.md"]


def test_sources_pickle_without_handles(image_zip, hdf5_files):
    for path in (image_zip, hdf5_files["encoded"].path):
        source = open_source(path)
        first = source.read_at(0)
        clone = pickle.loads(pickle.dumps(source))
        assert clone.ids == source.ids and clone.read_at(0) == first
        source.close()
        clone.close()


def test_stopping_a_stream_early_is_clean(image_zip):
    stream = iter_batches(open_source(image_zip), SPEC, batch_size=2, workers=2)
    first = next(stream)
    stream.close()
    assert len(first) == 2
    with pytest.raises(StopIteration):
        next(stream)


def test_symlinked_folders_are_followed_once(tmp_path, make_image_folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.png").write_bytes(encode_png(gradient_rgb(seed=8)))
    root = make_image_folder({"a.png": gradient_rgb(seed=9)})
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    source = open_source(root)
    assert source.ids == ["a.png", "linked/b.png"]
    assert [i for i, _ in source.unsupported] == ["loop/"]


def test_compressed_hdf5_rows_read_through_a_chunk_cache_that_holds_whole_chunks(tmp_path):
    import h5py

    from anomalymatch.sources.hdf5 import chunk_cache_bytes

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(70, 40, 40, 3), dtype=np.uint8)
    path = tmp_path / "lzf.h5"
    with h5py.File(path, "w") as f:
        big = f.create_dataset("images", data=images, chunks=(64, 40, 40, 3), compression="lzf")
        assert chunk_cache_bytes(big) == 4 * 64 * 40 * 40 * 3  # four chunks
        assert chunk_cache_bytes(f.create_dataset("flat", data=images[:2])) == 1 << 20  # contiguous: default
        huge = f.create_dataset(
            "huge", shape=(64, 2048, 2048, 3), dtype=np.uint8, chunks=(64, 2048, 2048, 3), compression="gzip"
        )
        assert chunk_cache_bytes(huge) == 256 << 20  # capped
        plain = f.create_dataset("plain", data=images, chunks=(64, 40, 40, 3))
        assert chunk_cache_bytes(plain) == 1 << 20  # unfiltered chunks are read in place: no cache needed
    with open_source(path, images="images") as source:
        assert np.array_equal(source.read_at(65), images[65]) and np.array_equal(source.read_at(3), images[3])
        assert source._pool._all[0].file.id.get_access_plist().get_cache()[2] == 4 * 64 * 40 * 40 * 3

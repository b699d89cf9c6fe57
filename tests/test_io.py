from pathlib import Path

import numpy as np
import pytest
from conftest import make_disks, write_dsb, write_image, write_paired

from nucleiseg.errors import DataError
from nucleiseg.io.images import (
    bundled_sample,
    detect_layout,
    find_images,
    find_samples,
    load_sample,
    load_samples,
    read_image,
    read_label_mask,
    read_planes,
)
from nucleiseg.io.microscopy import ReadOptions


def test_paired_layout_pairs_by_name_not_listing_order(tmp_path):
    # Images and masks whose sorted orders differ: pairing by position would mismatch them.
    a_img, a_lab = make_disks(count=2, seed=1)
    b_img, b_lab = make_disks(count=5, seed=2)
    write_image(tmp_path / "images" / "b.png", b_img)
    write_image(tmp_path / "images" / "a.png", a_img)
    write_image(tmp_path / "masks" / "a_mask.png", a_lab.astype(np.uint16))
    write_image(tmp_path / "masks" / "0b.png", np.zeros((64, 64), np.uint8))  # decoy first
    write_image(tmp_path / "masks" / "b.png", b_lab.astype(np.uint16))
    samples, skipped = find_samples(tmp_path, skip_bad=True)
    assert [s.name for s in samples] == ["a", "b"]
    assert [name for name, _ in skipped] == ["0b.png"]
    for sample, (image, labels) in zip(samples, [(a_img, a_lab), (b_img, b_lab)]):
        got_image, got_labels = load_sample(sample)
        np.testing.assert_array_equal(got_image[..., 0], image)
        np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("style", ["labels16", "binary255", "binary01"])
def test_paired_mask_styles_give_instances(tmp_path, samples, style):
    root = write_paired(tmp_path, samples, mask_style=style)
    found, _ = find_samples(root)
    for sample, (_, _, labels) in zip(found, samples):
        _, got = load_sample(sample)
        assert got.max() == labels.max()  # separate disks = separate components
        np.testing.assert_array_equal(got > 0, labels > 0)


def test_inputs_and_labels_folder_names(tmp_path, samples):
    root = write_paired(tmp_path, samples, image_dir="inputs", mask_dir="labels")
    assert detect_layout(root) == "paired"
    assert len(find_samples(root)[0]) == len(samples)


def test_dsb_layout_merges_one_mask_per_nucleus(dsb_dir, samples):
    assert detect_layout(dsb_dir) == "dsb"
    found, skipped = find_samples(dsb_dir)
    assert skipped == [] and [s.name for s in found] == [n for n, _, _ in samples]
    for sample, (_, image, labels) in zip(found, samples):
        got_image, got_labels = load_sample(sample)
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_array_equal(got_image[..., 0], image)


@pytest.mark.parametrize("suffix,dtype,channels", [
    (".png", np.uint8, 1), (".png", np.uint16, 1), (".png", np.uint8, 4), (".tif", np.uint8, 3),
    (".tif", np.float32, 1), (".jpg", np.uint8, 3),
])
def test_read_image_formats(tmp_path, suffix, dtype, channels):
    image = (np.random.default_rng(0).random((40, 50, channels)) * 200).astype(dtype)
    if channels == 1:
        image = image[..., 0]
    got = read_image(write_image(tmp_path / f"x{suffix}", image))
    assert got.shape == (40, 50, channels) and got.dtype == dtype
    if suffix != ".jpg":
        np.testing.assert_array_equal(got.reshape(image.shape), image)


def test_missing_mask_stops_with_file_name(tmp_path, samples):
    root = write_paired(tmp_path, samples)
    (root / "masks" / "img03.png").unlink()
    with pytest.raises(DataError, match=r"img03\.png.*no mask"):
        find_samples(root)
    found, skipped = find_samples(root, skip_bad=True)
    assert len(found) == len(samples) - 1 and skipped[0][0] == "img03.png"


def test_mask_of_another_size_names_the_mask(tmp_path, samples):
    root = write_paired(tmp_path, samples)
    write_image(root / "masks" / "img02.png", np.zeros((32, 32), np.uint16))
    found, _ = find_samples(root)
    with pytest.raises(DataError, match=r"masks/img02\.png: mask size 32x32 differs"):
        load_samples(found)
    loaded, skipped = load_samples(found, skip_bad=True)
    assert len(loaded) == len(samples) - 1 and skipped[0][0] == "img02"


def test_dsb_mask_of_another_size_names_the_mask(tmp_path, samples):
    root = write_dsb(tmp_path, samples[:2])
    bad = sorted((root / "img01" / "masks").iterdir())[0]
    write_image(bad, np.zeros((10, 10), np.uint8))
    found, _ = find_samples(root)
    with pytest.raises(DataError, match=bad.name + ": mask size 10x10 differs"):
        load_samples(found)


@pytest.mark.parametrize("content", [b"", b"this is not a png at all"])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"broken\.png: (empty file|cannot read as an image)"):
        read_image(path)


def test_unreadable_sample_is_skipped_and_listed(tmp_path, samples):
    root = write_paired(tmp_path, samples)
    (root / "images" / "img01.png").write_bytes(b"garbage")
    found, _ = find_samples(root)
    with pytest.raises(DataError, match="img01.png"):
        load_samples(found)
    loaded, skipped = load_samples(found, skip_bad=True)
    assert [name for name, _ in skipped] == ["img01"] and len(loaded) == len(samples) - 1


def test_empty_and_wrong_layout_folders_say_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty folder; expected either the Data Science Bowl"):
        find_samples(tmp_path / "empty")
    write_image(tmp_path / "flat" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="no labelled data found; expected either"):
        find_samples(tmp_path / "flat")
    with pytest.raises(DataError, match="no such folder"):
        find_samples(tmp_path / "nowhere")


def test_label_mask_rejects_colour_and_fractions(tmp_path):
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    with pytest.raises(DataError, match="colour mask"):
        read_label_mask(write_image(tmp_path / "c.png", colour))
    with pytest.raises(DataError, match="whole numbers"):
        read_label_mask(write_image(tmp_path / "f.tif", np.full((8, 8), 0.5, np.float32)))


def test_find_images_expands_files_and_folders(tmp_path, paired_dir, dsb_dir):
    single = write_image(tmp_path / "loose" / "one.tif", np.zeros((8, 8), np.uint16))
    found = find_images([single, paired_dir, dsb_dir])
    assert found[0] == single
    assert len(found) == 1 + 6 + 6
    with pytest.raises(DataError, match="no such file or folder"):
        find_images([tmp_path / "missing.png"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: not a supported image type"):
        find_images([tmp_path / "notes.txt"])


def test_bundled_sample_is_usable_small_and_has_every_kind():
    from nucleiseg.algorithms.preprocess import image_kind

    total = 0
    for part in ("train", "test"):
        root = bundled_sample(part)
        found, skipped = find_samples(root)
        loaded, unreadable = load_samples(found)
        assert skipped == [] and unreadable == []
        kinds = {image_kind(image) for _, image, _ in loaded}
        assert kinds == {"fluorescence", "histology", "brightfield"}, part
        total += len(loaded)
    assert total == 40
    size = sum(p.stat().st_size for p in bundled_sample("train").parent.rglob("*") if p.is_file())
    assert size < 5 * 2**20
    assert (bundled_sample("train").parent / "SOURCES.md").read_text().count("CC0") >= 1


def test_outputs_are_readable_by_others(tmp_path):
    import os
    import stat

    from nucleiseg.io.images import write_png

    old = os.umask(0o022)
    try:
        write_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o644


# ---------------------------------------------------------------- bad files, one by one


def truncated(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def png_claiming(path, width, height):
    """A valid small PNG whose header is patched to claim width x height (a decompression
    bomb would decode to that size)."""
    import struct
    import zlib

    write_image(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


NOISE = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("make,message", [
    (lambda d: write_image(d / "a.png", NOISE) and truncated(d / "a.png"),
     "cannot read as an image"),
    (lambda d: write_image(d / "a.jpg", NOISE) and truncated(d / "a.jpg"),
     "cannot read as an image"),
    (lambda d: write_image(d / "a.tif", NOISE) and truncated(d / "a.tif"),
     "cannot read as an image"),
    (lambda d: (d / "a.jpg").write_bytes(b"") or d / "a.jpg", "empty file"),
    (lambda d: (d / "a.tif").write_bytes(b"") or d / "a.tif", "empty file"),
    (lambda d: write_image(d / "a.png", np.zeros((1, 1), np.uint8)), "image is too small \\(1x1"),
    (lambda d: write_image(d / "a.tif", np.zeros((1, 40), np.uint16)),
     "image is too small \\(1x40"),
    (lambda d: write_image(d / "a.tif", np.zeros((5, 16, 16), np.uint8)), "a stack of images"),
    (lambda d: write_image(d / "a.tif", np.zeros((2, 3, 16, 16), np.uint8)), "a stack of images"),
    (lambda d: write_image(d / "a.tif", np.full((8, 8), np.nan, np.float32)),
     "64 pixel values are NaN or infinite"),
    (lambda d: write_image(d / "a.tif", np.array([[0, np.inf], [1, 2]], np.float64)),
     "1 pixel values are NaN or infinite"),
    (lambda d: png_claiming(d / "a.png", 200_000, 100_000), "header claims 200000x100000 pixels"),
    (lambda d: (d / "a.png").mkdir() or d / "a.png", "not a file"),
])
def test_bad_image_files_give_a_message_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=f"{path.name}: {message}"):
        read_image(path)


def test_size_limit_applies_to_tiff_and_can_be_raised(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.tif", np.zeros((40, 50), np.uint8))
    with pytest.raises(DataError, match="big.tif: header claims 50x40 pixels"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=2000).shape == (40, 50, 1)
    with pytest.raises(DataError, match="raise it with --max-pixels"):
        read_planes(path, ReadOptions(max_pixels=1000))


def test_label_masks_with_more_nuclei_than_16_bits_hold(tmp_path):
    labels = np.zeros((600, 600), np.uint32)
    labels[::2, ::2] = np.arange(1, 300 * 300 + 1, dtype=np.uint32).reshape(300, 300)
    read = read_label_mask(write_image(tmp_path / "many.tif", labels))
    assert read.max() == 90_000 and np.array_equal(read, labels)


def test_file_names_with_spaces_and_non_utf8_bytes(tmp_path):
    import os

    folder = os.fsdecode(bytes(tmp_path) + b"/caf\xe9 images")
    path = write_image(Path(folder) / os.fsdecode(b"nucl\xe9i 1.png"), NOISE)
    assert find_images([folder]) == [path]
    assert read_image(path).shape == (64, 64, 3)

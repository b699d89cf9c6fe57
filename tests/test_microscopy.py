"""Files straight from microscopes: compressed TIFFs, OME-TIFF and ImageJ TIFF with channels,
z-planes, time points and pixel sizes, all made here in code."""

import numpy as np
import pytest
import tifffile
from conftest import make_disks, write_image

from nucleiseg.algorithms.instances import in_micrometres
from nucleiseg.errors import DataError
from nucleiseg.io.images import read_array, read_image, read_pixels, read_planes, write_labels
from nucleiseg.io.microscopy import (
    ReadOptions,
    format_pixel_size,
    parse_channel,
    plane_columns,
)

RNG = np.random.default_rng(0)
GREY16 = RNG.integers(0, 4096, (48, 56), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (48, 56, 3), dtype=np.uint8)
# smooth enough for JPEG to keep it close
SMOOTH8 = (np.add.outer(np.arange(48), np.arange(56)) * 2).astype(np.uint8)


@pytest.mark.parametrize("compression,array,extra", [
    ("lzw", GREY16, {}),
    ("lzw", GREY16, {"predictor": True}),  # what Fiji writes for 16-bit images
    ("lzw", RGB8, {}),
    ("deflate", GREY16, {}),
    ("adobe_deflate", GREY16, {}),
    ("zstd", GREY16, {}),
    ("packbits", RGB8, {}),
    ("packbits", GREY16, {}),
])
def test_compressed_tiffs_read_as_written(tmp_path, compression, array, extra):
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, array, compression=compression, **extra)
    with tifffile.TiffFile(path) as tif:  # the file really is compressed so
        assert tif.pages[0].compression == tifffile.COMPRESSION[compression.upper()]
    got = read_image(path)
    np.testing.assert_array_equal(got.reshape(array.shape), array)
    assert got.dtype == array.dtype


@pytest.mark.parametrize("array", [SMOOTH8, np.dstack([SMOOTH8, 255 - SMOOTH8, SMOOTH8 // 2])])
def test_jpeg_compressed_tiff_reads_close_to_what_was_written(tmp_path, array):
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, array, compression="jpeg")
    got = read_image(path)
    assert got.shape[:2] == array.shape[:2] and got.dtype == np.uint8
    assert got.shape[-1] == (3 if array.ndim == 3 else 1)  # colour stays colour
    assert np.abs(got.reshape(array.shape).astype(int) - array).mean() < 3  # lossy


def ome_stack(path, compression="lzw", names=("GFP", "DAPI"), size=0.325, unit=None):
    """A Z x C x Y x X OME-TIFF: channel 1 holds disks (nuclei), channel 0 noise."""
    nuclei = np.stack([make_disks((48, 56), count=3, seed=s)[0].astype(np.uint16) * 100
                       for s in range(3)])
    noise = RNG.integers(0, 3000, nuclei.shape, dtype=np.uint16)
    data = np.stack([noise, nuclei], axis=1)
    metadata = {"axes": "ZCYX", "Channel": {"Name": list(names)}}
    if size is not None:
        metadata.update(PhysicalSizeX=size, PhysicalSizeY=size)
    if unit is not None:
        metadata.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    tifffile.imwrite(path, data, ome=True, metadata=metadata, compression=compression)
    return data


def test_ome_tiff_axes_channel_names_and_pixel_size(tmp_path):
    path = tmp_path / "cells.ome.tif"
    data = ome_stack(path)
    array, info = read_pixels(path)
    assert info.axes == "ZCYX" and info.plane_axes == "Z"
    assert info.channel_names == ("GFP", "DAPI") and info.pixel_size_um == (0.325, 0.325)
    np.testing.assert_array_equal(array, data)
    for channel in ("DAPI", "dapi", 1):
        images, axes, _ = read_planes(path, ReadOptions(channel=channel))
        assert axes == "Z" and images.shape == (3, 48, 56, 1)
        np.testing.assert_array_equal(images[..., 0], data[:, 1])
    images, axes, _ = read_planes(path, ReadOptions(channel="GFP", planes="max"))
    assert axes == "" and images.shape == (48, 56, 1)
    np.testing.assert_array_equal(images[..., 0], data[:, 0].max(axis=0))
    images, _, info = read_planes(path, ReadOptions(channel=1, planes="mean", pixel_size=0.5))
    assert images.dtype == np.float32 and info.pixel_size_um == (0.5, 0.5)
    np.testing.assert_allclose(images[..., 0], data[:, 1].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("size,unit,expected", [
    (325, "nm", 0.325), (0.0005, "mm", 0.5), (0.65, "µm", 0.65), (1.0, "pixel", None),
    (None, None, None),
])
def test_ome_pixel_size_units(tmp_path, size, unit, expected):
    path = tmp_path / "a.ome.tif"
    ome_stack(path, size=size, unit=unit)
    got = read_pixels(path)[1].pixel_size_um
    assert got == (None if expected is None else pytest.approx((expected, expected)))


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])  # ImageJ escapes µ
def test_imagej_tiff_pixel_size_and_axes(tmp_path, unit):
    path = tmp_path / "ij.tif"
    data = RNG.integers(0, 255, (4, 2, 30, 40), dtype=np.uint8)  # T, C
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.25),
                     metadata={"axes": "TCYX", "unit": unit}, compression="zlib")
    array, info = read_pixels(path)
    assert info.axes == "TCYX" and info.pixel_size_um == pytest.approx((0.25, 0.2))
    images, axes, _ = read_planes(path, ReadOptions(channel=0))
    assert axes == "T"
    np.testing.assert_array_equal(images[..., 0], data[:, 0])
    with pytest.raises(DataError, match=r"ij\.tif: 2 channels: 0, 1; pass --channel"):
        read_planes(path)


def test_plain_tiff_resolution_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "scan.tif"  # a printing resolution (dpi), as image editors write
    tifffile.imwrite(path, GREY16, resolution=(300, 300), resolutionunit="INCH")
    assert read_pixels(path)[1].pixel_size_um is None


def test_channels_without_channel_option_are_listed_by_name(tmp_path):
    path = tmp_path / "two.ome.tif"
    ome_stack(path, names=("GFP", "DAPI"))
    with pytest.raises(DataError, match=r"two\.ome\.tif: 2 channels: 0 \(GFP\), 1 \(DAPI\); "
                       "pass --channel with the index or name of the nuclear stain"):
        read_planes(path)
    with pytest.raises(DataError, match=r"--channel 'RFP': no channel named 'RFP' \(channels: "
                       r"0 \(GFP\), 1 \(DAPI\)\)"):
        read_planes(path, ReadOptions(channel="RFP"))
    with pytest.raises(DataError, match=r"--channel 2 does not exist \(channels: 0 \(GFP\), "
                       r"1 \(DAPI\); indices count from 0\)"):
        read_planes(path, ReadOptions(channel=2))


def test_sixteen_bit_rgb_is_channels_not_colour(tmp_path):
    path = tmp_path / "rgb16.tif"
    data = RNG.integers(0, 60000, (30, 40, 3), dtype=np.uint16)
    tifffile.imwrite(path, data)  # photometric RGB
    with pytest.raises(DataError, match=r"rgb16\.tif: 3 channels: 0, 1, 2 \(uint16 colour: only "
                       r"8-bit RGB\(A\) is read in colour\); pass --channel"):
        read_image(path)
    np.testing.assert_array_equal(read_image(path, channel=2)[..., 0], data[..., 2])


def test_eight_bit_colour_stays_colour_and_grey_ignores_channel(tmp_path):
    for name in ("rgb.tif", "rgb.png"):
        got = read_image(write_image(tmp_path / name, RGB8))
        np.testing.assert_array_equal(got, RGB8)
        np.testing.assert_array_equal(read_image(tmp_path / name, channel=1)[..., 0],
                                      RGB8[..., 1])
    with pytest.raises(DataError, match=r"rgb\.png: --channel 'DAPI': this file names no "
                       r"channels \(channels: 0, 1, 2\); pass the channel's index"):
        read_image(tmp_path / "rgb.png", channel="DAPI")
    with pytest.raises(DataError, match=r"rgb\.png: --channel 3 does not exist"):
        read_image(tmp_path / "rgb.png", channel=3)
    grey = write_image(tmp_path / "grey.tif", GREY16)  # one channel: the nuclear one
    for channel in (None, 0, 1, "DAPI"):
        np.testing.assert_array_equal(read_image(grey, channel=channel)[..., 0], GREY16)


def test_channels_first_multichannel_tiff_needs_channel(tmp_path):
    path = tmp_path / "c4.ome.tif"
    data = RNG.integers(0, 255, (4, 20, 30), dtype=np.uint8)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX"})
    with pytest.raises(DataError, match="4 channels: 0, 1, 2, 3; pass --channel"):
        read_image(path)
    np.testing.assert_array_equal(read_image(path, channel=3)[..., 0], data[3])


def test_training_and_masks_refuse_stacks(tmp_path):
    path = tmp_path / "z.ome.tif"
    ome_stack(path)
    with pytest.raises(DataError, match=r"z\.ome\.tif: a stack of images \(3 \(Z\) x 2 \(C\) x "
                       r"48 \(Y\) x 56 \(X\)\), not one 2-D image; predict segments stacks"):
        read_image(path, channel=1)
    with pytest.raises(DataError, match="a stack of images"):
        read_array(path)


def test_parse_channel():
    assert parse_channel("2") == 2 and parse_channel(" DAPI ") == "DAPI"
    assert parse_channel("Hoechst 33342") == "Hoechst 33342"


def test_plane_columns_micrometres_and_pixel_size_text():
    assert plane_columns("", (), None) == {"plane": "", "t": "", "z": ""}
    assert plane_columns("TZ", (2, 3), 4) == {"plane": 4, "t": 1, "z": 1}
    assert plane_columns("Q", (5,), 3) == {"plane": 3, "t": "", "z": ""}
    row = {"area": 100.0, "centroid_y": 10.0, "centroid_x": 20.0}
    um = in_micrometres(row, (0.5, 0.25))
    assert um["area_um2"] == 12.5 and um["centroid_y_um"] == 5.0 and um["centroid_x_um"] == 5.0
    assert um["equivalent_diameter_um"] == pytest.approx(np.sqrt(4 * 12.5 / np.pi))
    assert set(in_micrometres(row, None).values()) == {""}
    assert format_pixel_size(None) == "" and format_pixel_size((0.325, 0.325)) == "0.325"
    assert format_pixel_size((0.3, 0.4)) == "0.3x0.4"


@pytest.mark.parametrize("axes,dtype,imagej", [
    ("Z", np.uint16, True), ("TZ", np.uint8, True), ("Q", np.uint16, False),
    ("Z", np.uint32, False), ("", np.uint16, True),
])
def test_label_stacks_keep_their_axes(tmp_path, axes, dtype, imagej):
    shape = {"": (), "Z": (3,), "TZ": (2, 3), "Q": (4,)}[axes]
    labels = RNG.integers(0, 50, (*shape, 20, 30)).astype(dtype)
    path = tmp_path / "labels.tif"
    write_labels(path, labels, axes, (0.5, 0.5))
    array, info = read_pixels(path)
    np.testing.assert_array_equal(array, labels)
    assert info.axes == axes + "YX"
    assert info.pixel_size_um == ((0.5, 0.5) if imagej else None)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej == imagej


# ---------------------------------------------------------------- damaged files


def truncate(path, fraction=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd", "packbits", "jpeg", None])
def test_truncated_multipage_tiffs_name_the_file(tmp_path, compression):
    path = tmp_path / "cut.tif"
    stack = np.stack([SMOOTH8] * 6)
    tifffile.imwrite(path, stack, compression=compression, metadata={"axes": "ZYX"})
    truncate(path)
    with pytest.raises(DataError, match=r"cut\.tif: (damaged or truncated TIFF|cannot read as "
                       "an image)"):
        read_planes(path)


@pytest.mark.parametrize("compression", ["lzw", "zstd", None])
def test_truncated_ome_tiff_names_the_file(tmp_path, compression):
    path = tmp_path / "cut.ome.tif"
    ome_stack(path, compression=compression)
    truncate(path)
    with pytest.raises(DataError, match=r"cut\.ome\.tif: (damaged or truncated TIFF|cannot read "
                       "as an image)"):
        read_planes(path, ReadOptions(channel=1))


def test_damaged_ome_xml_names_the_file(tmp_path):
    path = tmp_path / "bad.ome.tif"
    ome_stack(path)
    data = path.read_bytes()
    where = data.index(b"<Channel")
    path.write_bytes(data[:where] + b"<Chan#el" + data[where + 8:])  # same length, bad XML
    with pytest.raises(DataError, match=r"bad\.ome\.tif: damaged OME-XML metadata"):
        read_pixels(path)


def test_ome_xml_that_does_not_fit_the_pages_names_the_file(tmp_path):
    path = tmp_path / "lies.ome.tif"
    ome_stack(path, compression=None)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'SizeZ="3"', b'SizeZ="9"'))  # more planes than pages
    with pytest.raises(DataError, match=r"lies\.ome\.tif: damaged or truncated TIFF"):
        read_pixels(path)


def test_truncated_imagej_hyperstack_names_the_file(tmp_path):
    path = tmp_path / "cut_ij.tif"
    tifffile.imwrite(path, RNG.integers(0, 255, (5, 2, 30, 40), dtype=np.uint8), imagej=True,
                     metadata={"axes": "ZCYX"}, compression="lzw")
    truncate(path, 0.5)
    with pytest.raises(DataError, match=r"cut_ij\.tif: (damaged or truncated TIFF|cannot read "
                       "as an image)"):
        read_planes(path, ReadOptions(channel=0))

import numpy as np
import pytest
from conftest import make_disks

from nucleiseg.algorithms.preprocess import (
    image_kind,
    normalize_image,
    resize_image,
    resize_labels,
    to_rgb,
)


def test_16_bit_and_8_bit_give_the_same_input():
    image, _ = make_disks(seed=3)
    as16 = image.astype(np.uint16) * 257  # the same picture, stored in 16 bits
    np.testing.assert_allclose(normalize_image(image), normalize_image(as16), atol=1e-6)
    dim16 = image.astype(np.uint16) * 4  # 10-bit data in a 16-bit file: /255 would break it
    np.testing.assert_allclose(normalize_image(image), normalize_image(dim16), atol=1e-6)


def test_grey_rgb_and_rgba_agree():
    grey, _ = make_disks(seed=4)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full(grey.shape + (1,), 255, np.uint8)], axis=-1)
    expected = normalize_image(grey)
    assert expected.shape == (64, 64, 3) and expected.dtype == np.float32
    np.testing.assert_array_equal(normalize_image(rgb), expected)
    np.testing.assert_array_equal(normalize_image(rgba), expected)
    np.testing.assert_array_equal(normalize_image(grey[..., None]), expected)


def test_normalised_range_and_degenerate_images():
    image, _ = make_disks(seed=5)
    out = normalize_image(image)
    assert out.min() == 0.0 and out.max() == 1.0
    flat = normalize_image(np.full((10, 10), 7, np.uint16))
    assert np.all(flat == 0) and np.isfinite(flat).all()
    with_nan = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    with_nan[0, 0], with_nan[1, 1] = np.nan, np.inf
    got = normalize_image(with_nan)
    assert np.isfinite(got).all() and got[0, 0, 0] == 0


def test_resize_labels_is_nearest_neighbour():
    _, labels = make_disks(count=6, seed=6)
    for shape in [(32, 32), (100, 90)]:
        resized = resize_labels(labels, shape)
        assert resized.shape == shape and resized.dtype == labels.dtype
        assert set(np.unique(resized)) <= set(np.unique(labels))


def test_resize_image_is_smooth():
    image = normalize_image(make_disks(seed=7)[0])
    small = resize_image(image, (32, 32))
    assert small.shape == (32, 32, 3)
    assert len(np.unique(small)) > len(np.unique(image[:32, :32])) / 4  # interpolated values
    assert 0 <= small.min() and small.max() <= 1


@pytest.mark.parametrize("bright,colour,expected", [
    (False, False, "fluorescence"), (True, False, "brightfield"), (True, True, "histology"),
    (False, True, "fluorescence"),  # a colour composite on a dark background
])
def test_image_kind(bright, colour, expected):
    image, _ = make_disks(seed=8, bright_background=bright)
    image = to_rgb(image[..., None]).copy()
    if colour:
        image[..., 1] = image[..., 1] // 2
    assert image_kind(image) == expected


def test_dense_tissue_darker_than_mid_range_is_still_histology():
    """Nuclei covering most of an H&E tile put its median below the middle of its range
    (MoNuSeg: 122 of 70-236); it is not a dark-background composite."""
    image = np.full((64, 64, 3), (125, 60, 150), np.uint8)  # dense purple nuclei
    image[:16] = (240, 225, 245)  # some bright background
    assert image_kind(image) == "histology"
    dim = np.full((64, 64, 3), (36, 34, 37), np.uint8)  # dim H&E: the background brightest
    dim[:, 32:] = (27, 20, 30)  # nuclei on half of it: the median midway
    dim[20:30, 20:30] = (19, 9, 22)
    assert image_kind(dim) == "histology"


def test_fluorescence_grey_is_the_brightest_channel_of_a_composite():
    from nucleiseg.algorithms.preprocess import fluorescence_grey

    image, _ = make_disks(seed=8)
    composite = np.zeros((*image.shape, 4), image.dtype)  # RGBA: blue nuclei, dim green
    composite[..., 2], composite[..., 1], composite[..., 3] = image, image // 3, 255
    assert image_kind(composite) == "fluorescence"
    assert np.array_equal(fluorescence_grey(composite), image)
    assert fluorescence_grey(image) is image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_normalising_by_table_gives_exactly_the_arithmetic_values(dtype):
    from nucleiseg.algorithms.preprocess import apply_intensity_range, scale_integers, to_rgb

    top = np.iinfo(dtype).max
    image = np.random.default_rng(1).integers(0, top, (40, 30, 3), endpoint=True).astype(dtype)
    low, high = 0.13 * top, 0.87 * top
    np.testing.assert_array_equal(apply_intensity_range(image, low, high),
                                  scale_integers(to_rgb(image), low, high))
    np.testing.assert_array_equal(apply_intensity_range(image[..., :1], low, high),
                                  scale_integers(to_rgb(image[..., :1]), low, high))

"""Cells grown from nuclei: by distance, and within a cytoplasm or membrane channel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from nucleiseg.algorithms.cells import cells_from_channel, expand_nuclei

NUCLEUS_RADIUS = 5
CELL_RADIUS = 17


def make_three_channels(seed=0, shape=(96, 96), grid=3, label_gaps=False):
    """Nuclei (disks), true cells (larger disks, split between touching neighbours) and a
    DAPI, cytoplasm, membrane (cell outlines) image, H x W x 3 float."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    nuclei = np.zeros(shape, np.int32)
    centres = []
    step = shape[0] // grid
    for row in range(grid):
        for col in range(grid):
            cy = step // 2 + row * step + rng.integers(-3, 4)
            cx = step // 2 + col * step + rng.integers(-3, 4)
            centres.append((cy, cx))
    ids = [3 * n + 7 for n in range(len(centres))] if label_gaps else range(1, len(centres) + 1)
    distance_to_centre = np.full(shape, np.inf)
    cells = np.zeros(shape, np.int32)
    for label, (cy, cx) in zip(ids, centres):
        distance = np.hypot(yy - cy, xx - cx)
        nuclei[distance <= NUCLEUS_RADIUS] = label
        closer = (distance <= CELL_RADIUS) & (distance < distance_to_centre)
        cells[closer] = label
        distance_to_centre = np.minimum(distance_to_centre, distance)
    dapi = np.where(nuclei > 0, 200.0, 10.0)
    cytoplasm = np.where((cells > 0) & (nuclei == 0), 150.0, 60.0 * (cells > 0))
    cytoplasm = np.where(find_boundaries(cells, mode="inner"), 40.0, cytoplasm) + 5.0
    membrane = np.where(find_boundaries(cells, mode="inner"), 220.0, 15.0)
    image = np.stack([dapi, cytoplasm, membrane], axis=-1)
    image += rng.normal(0, 3, image.shape)
    return image, nuclei, cells


def iou_per_label(truth, found):
    return {int(i): np.sum((truth == i) & (found == i)) / np.sum((truth == i) | (found == i))
            for i in np.unique(truth) if i}


@pytest.mark.parametrize("stain, channel", [("cytoplasm", 1), ("membrane", 2)])
def test_every_nucleus_has_one_cell_containing_it(stain, channel):
    image, nuclei, true_cells = make_three_channels()
    cells = cells_from_channel(nuclei, image[..., channel], max_distance=CELL_RADIUS, stain=stain)
    assert cells.dtype == nuclei.dtype
    assert set(np.unique(cells)) - {0} == set(np.unique(nuclei)) - {0}
    assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0])
    for label in np.unique(cells[cells > 0]):  # one connected cell per nucleus
        assert ndi.label(cells == label)[1] == 1
    assert min(iou_per_label(true_cells, cells).values()) > 0.8  # touching cells split


@pytest.mark.parametrize("stain, channel", [("cytoplasm", 1), ("membrane", 2)])
def test_cells_stay_within_max_distance(stain, channel):
    image, nuclei, _ = make_three_channels(seed=1)
    image[40:56, :, 2] = 15.0  # a band without membrane: cells there leak into the background
    cells = cells_from_channel(nuclei, image[..., channel], max_distance=3, stain=stain)
    assert np.all(ndi.distance_transform_edt(nuclei == 0)[cells > 0] <= 3)
    leaky = cells_from_channel(nuclei, image[..., channel], max_distance=25, stain=stain)
    assert np.all(ndi.distance_transform_edt(nuclei == 0)[leaky > 0] <= 25)
    assert set(np.unique(leaky)) - {0} == set(np.unique(nuclei)) - {0}


def test_threshold_above_the_channel_leaves_the_nuclei():
    image, nuclei, _ = make_three_channels(seed=1)
    only_nuclei = cells_from_channel(nuclei, image[..., 1], max_distance=10, threshold=1e9)
    assert np.array_equal(only_nuclei, nuclei)


def test_cells_keep_label_gaps_and_dtype():
    image, nuclei, _ = make_three_channels(label_gaps=True)
    nuclei = nuclei.astype(np.uint16)
    cells = cells_from_channel(nuclei, image[..., 1], max_distance=CELL_RADIUS)
    assert cells.dtype == np.uint16
    assert set(np.unique(cells)) == set(np.unique(nuclei))


def test_constant_channel_gives_the_nuclei():
    _, nuclei, _ = make_three_channels()
    cells = cells_from_channel(nuclei, np.full(nuclei.shape, 7.0), max_distance=10)
    assert np.array_equal(cells, nuclei)


def test_no_nuclei_gives_no_cells():
    empty = np.zeros((16, 16), np.int32)
    assert not cells_from_channel(empty, np.random.default_rng(0).random((16, 16)), 5).any()
    assert not expand_nuclei(empty, 5).any()


def test_bad_arguments_are_refused():
    _, nuclei, _ = make_three_channels()
    with pytest.raises(ValueError, match="stain"):
        cells_from_channel(nuclei, nuclei.astype(float), 5, stain="nucleus")
    with pytest.raises(ValueError, match="shape"):
        cells_from_channel(nuclei, np.zeros((3, 3)), 5)
    with pytest.raises(ValueError, match="integer"):
        expand_nuclei(nuclei.astype(float), 5)


@pytest.mark.parametrize("distance", [0, 2, 6, 30])
def test_expand_nuclei_never_overlaps_nor_exceeds_the_distance(distance):
    _, nuclei, _ = make_three_channels(seed=2, label_gaps=True)
    cells = expand_nuclei(nuclei, distance)
    assert cells.dtype == nuclei.dtype
    assert set(np.unique(cells)) - {0} == set(np.unique(nuclei)) - {0}
    assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0])  # neighbours' nuclei kept
    for label in np.unique(nuclei[nuclei > 0]):
        reach = ndi.distance_transform_edt(nuclei != label)
        assert reach[cells == label].max() <= distance + 1e-9
    grown_everywhere = ndi.distance_transform_edt(nuclei == 0) <= distance
    assert np.array_equal(cells > 0, grown_everywhere)


def test_expand_nuclei_with_spacing_grows_less_along_coarse_axis():
    nuclei = np.zeros((41, 41), np.int32)
    nuclei[20, 20] = 5
    cells = expand_nuclei(nuclei, 4, spacing=(2.0, 1.0))  # rows twice as far apart
    rows, cols = np.nonzero(cells == 5)
    assert np.ptp(rows) == 4 and np.ptp(cols) == 8

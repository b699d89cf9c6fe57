import numpy as np
import pytest
from conftest import make_disks

from nucleiseg.data import labels_to_classes
from nucleiseg.instances import InstanceOptions, labels_from_probabilities, measure_nuclei


def two_touching_disks():
    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    labels[((yy - 20) ** 2 + (xx - 38) ** 2 <= 100) & (labels == 0)] = 2
    return labels


def one_hot(classes, n=3):
    return np.eye(n, dtype=np.float32)[classes]


def test_boundary_target_marks_the_contact_line():
    labels = two_touching_disks()
    classes = labels_to_classes(labels, "boundary")
    assert set(np.unique(classes)) == {0, 1, 2}
    assert classes[20, 30] == 2 and classes[20, 31] == 2  # both sides of the contact
    assert classes[20, 20] == 1 and classes[0, 0] == 0
    assert (classes > 0).sum() == (labels > 0).sum()


def test_touching_nuclei_are_separated_by_the_boundary_class():
    labels = two_touching_disks()
    predicted = labels_from_probabilities(one_hot(labels_to_classes(labels, "boundary")))
    assert predicted.max() == 2
    for value in (1, 2):  # each true nucleus maps onto exactly one predicted nucleus
        assert len(np.unique(predicted[labels == value])) == 1
    binary = labels_from_probabilities(one_hot(labels_to_classes(labels, "binary"), 2))
    assert binary.max() == 1  # a binary mask cannot part them


def test_small_objects_removed_and_holes_filled():
    classes = np.zeros((30, 30), np.uint8)
    classes[5:15, 5:15] = 1
    classes[9:11, 9:11] = 0  # a hole
    classes[25, 25] = 1  # a speck
    labels = labels_from_probabilities(one_hot(classes, 2), InstanceOptions(min_size=5))
    assert labels.max() == 1 and labels[10, 10] == 1 and labels[25, 25] == 0
    kept = labels_from_probabilities(one_hot(classes, 2), InstanceOptions(min_size=1,
                                                                         fill_holes=False))
    assert kept.max() == 2 and kept[10, 10] == 0


def test_foreground_without_interior_still_becomes_a_nucleus():
    classes = np.zeros((20, 20), np.uint8)
    classes[5:8, 5:8] = 2  # all boundary, no interior marker
    labels = labels_from_probabilities(one_hot(classes), InstanceOptions(min_size=1))
    assert labels.max() == 1 and (labels > 0).sum() == 9


def test_measurements_per_nucleus():
    image, labels = make_disks(count=3, seed=5)
    rows = measure_nuclei(labels, image)
    assert [row["label"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert row["area"] == (labels == row["label"]).sum()
        assert row["mean_intensity"] > 150  # disks are bright
        assert row["equivalent_diameter"] == pytest.approx(2 * np.sqrt(row["area"] / np.pi))
        assert row["bbox_min_y"] <= row["centroid_y"] <= row["bbox_max_y"]


def test_tuned_postprocessing_from_the_record_and_overrides():
    from nucleiseg.instances import instance_options_from

    assert instance_options_from(None) == InstanceOptions()
    record = {"postprocessing": {"marker_threshold": 0.7, "min_size": 30}}
    tuned = instance_options_from(record)
    assert tuned.marker_threshold == 0.7 and tuned.min_size == 30
    assert tuned.foreground_threshold == InstanceOptions().foreground_threshold
    overridden = instance_options_from(record, min_size=5, marker_threshold=None)
    assert overridden.min_size == 5 and overridden.marker_threshold == 0.7


def global_watershed_reference(probabilities, options):
    """The straightforward whole-image version (watershed over all regions at once)."""
    from scipy import ndimage
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    foreground = probabilities[..., 0] < 255 - round(options.foreground_threshold * 255)
    foreground = ndimage.binary_fill_holes(foreground)
    interior = probabilities[..., 1]
    markers = label((interior > round(options.marker_threshold * 255)) & foreground,
                    connectivity=1)
    labels = watershed(-interior.astype(np.int16), markers, mask=foreground)
    orphans = label(foreground & (labels == 0), connectivity=1)
    labels = np.where(orphans > 0, orphans + labels.max(), labels)
    too_small = np.bincount(labels.ravel()) < options.min_size
    too_small[0] = False
    labels[too_small[labels]] = 0
    return relabel_sequential(labels)[0]


def same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("seed", range(4))
def test_region_by_region_equals_one_whole_image_watershed(seed):
    """Processing each foreground region in its own box gives the same nuclei as a
    watershed over the whole image, numbered in another order."""
    from scipy import ndimage

    from nucleiseg.instances import quantise_probabilities

    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(120, 90, 3)), (3, 3, 0)) * 12
    probabilities = quantise_probabilities(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    options = InstanceOptions(foreground_threshold=0.5, marker_threshold=0.6, min_size=4)
    labels = labels_from_probabilities(probabilities, options)
    reference = global_watershed_reference(probabilities, options)
    assert labels.max() == reference.max() > 3
    assert same_partition(labels, reference)


def test_measurements_match_scikit_image_regionprops():
    from skimage.measure import regionprops_table

    from nucleiseg.instances import COLUMNS

    image, labels = make_disks((300, 400), seed=3)
    labels = labels.astype(np.int32)
    labels[labels == 2] = 0  # numbering with a gap
    rows = measure_nuclei(labels, image)
    expected = regionprops_table(labels, intensity_image=np.asarray(image, np.float64),
                                 properties=("label", "area", "centroid", "bbox",
                                             "equivalent_diameter_area", "eccentricity",
                                             "intensity_mean"))
    names = ("label", "area", "centroid-0", "centroid-1", "bbox-0", "bbox-1", "bbox-2", "bbox-3",
             "equivalent_diameter_area", "eccentricity", "intensity_mean")
    assert len(rows) == len(expected["label"]) >= 3
    for column, name in zip(COLUMNS, names):
        np.testing.assert_allclose([row[column] for row in rows], expected[name], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_fill_holes_is_binary_fill_holes(seed):
    from scipy import ndimage

    from nucleiseg.instances import fill_holes

    mask = np.random.default_rng(seed).random((60, 50)) < 0.55
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))

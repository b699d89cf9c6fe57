import dataclasses

import numpy as np
import pytest
from conftest import make_disks

from nucleiseg.algorithms.instances import (
    InstanceOptions,
    labels_from_probabilities,
    measure_nuclei,
)
from nucleiseg.algorithms.preprocess import image_kind
from nucleiseg.algorithms.targets import labels_to_classes


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
    from nucleiseg.algorithms.instances import instance_options_from

    assert instance_options_from(None) == InstanceOptions()
    record = {"postprocessing": {"marker_threshold": 0.7, "min_size": 30}}
    tuned = instance_options_from(record)
    assert tuned.marker_threshold == 0.7 and tuned.min_size == 30
    assert tuned.foreground_threshold == InstanceOptions().foreground_threshold
    overridden = instance_options_from(record, min_size=5, marker_threshold=None)
    assert overridden.min_size == 5 and overridden.marker_threshold == 0.7
    as_json = instance_options_from({"postprocessing": {"split_levels": [0.9, 0.8]}})
    assert as_json.split_levels == (0.8, 0.9)  # a record's list, sorted, as a tuple
    assert instance_options_from(record, split_levels=()).split_levels == ()



def test_postprocessing_per_image_kind_and_overrides_win_for_every_kind():
    from nucleiseg.algorithms.instances import instance_options_from

    def applied(options, image):  # as the pipeline applies them: for the image's kind
        return options.for_kind(image_kind(image))

    record = {"postprocessing": {"min_confidence": 0.8, "by_kind": {
        "histology": {"min_confidence": 0.6, "foreground_threshold": 0.4}}}}
    tuned = instance_options_from(record)
    grey = np.zeros((64, 64), np.uint8)
    grey[20:40, 20:40] = 200
    colour = 255 - np.stack([grey // 2, grey, grey // 3], -1)  # purple on white: H&E-like
    assert applied(tuned, grey).min_confidence == 0.8
    for_colour = applied(tuned, colour)
    assert (for_colour.min_confidence, for_colour.foreground_threshold) == (0.6, 0.4)
    assert for_colour.by_kind == {} and applied(for_colour, grey) == for_colour
    overridden = instance_options_from(record, min_confidence=0.1)
    assert applied(overridden, colour).min_confidence == 0.1
    assert applied(overridden, colour).foreground_threshold == 0.4
    assert applied(overridden, grey).min_confidence == 0.1
    assert instance_options_from(record, min_confidence=0.1, foreground_threshold=0.5).by_kind == {}
    with pytest.raises(ValueError, match="histology: unknown \\['min_confidenc'\\]"):
        InstanceOptions(by_kind={"histology": {"min_confidenc": 0.5}})


def joined_disks(core_probability=0.95, core_radius=7):
    """Two touching disks whose interior probability is 0.6 everywhere (the model joined them
    at the usual marker threshold) except in a core of each, where it is `core_probability`."""
    labels = two_touching_disks()
    yy, xx = np.mgrid[:40, :60]
    interior = np.where(labels > 0, 0.6, 0.0)
    for cx in (20, 38):
        interior[((yy - 20) ** 2 + (xx - cx) ** 2 <= core_radius**2)] = core_probability
    probabilities = np.stack([1 - (labels > 0), interior, (labels > 0) - interior], -1)
    return labels, probabilities.astype(np.float32)


def test_a_seed_splits_where_a_higher_level_holds_two_large_cores():
    labels, probabilities = joined_disks()
    joined = labels_from_probabilities(probabilities, InstanceOptions(split_levels=()))
    assert joined.max() == 1
    split = labels_from_probabilities(probabilities)  # default levels 0.8, 0.9; cores ~150 px
    assert split.max() == 2
    for value in (1, 2):  # each disk is one predicted nucleus, nearly all of it
        values, counts = np.unique(split[labels == value], return_counts=True)
        assert counts.max() > 0.95 * (labels == value).sum()
    assert (split > 0).sum() == (labels > 0).sum()  # splitting moves no foreground
    too_small = InstanceOptions(min_split_size=200)  # cores smaller than that: no split
    assert labels_from_probabilities(probabilities, too_small).max() == 1
    low = labels_from_probabilities(joined_disks(core_probability=0.85)[1])
    assert low.max() == 2  # one of the levels (0.8) suffices


def test_small_bright_spots_do_not_split_a_nucleus():
    labels, probabilities = joined_disks(core_radius=3)  # cores of 29 px
    assert labels_from_probabilities(probabilities).max() == 1


def test_unsure_nuclei_are_removed_by_min_confidence():
    labels = np.zeros((30, 60), np.int32)
    labels[5:20, 5:20], labels[5:20, 35:50] = 1, 2
    nucleus = np.where(labels == 1, 0.95, np.where(labels == 2, 0.7, 0.0))  # P(nucleus)
    probabilities = np.stack([1 - nucleus, nucleus, np.zeros_like(nucleus)], -1)
    assert labels_from_probabilities(probabilities).max() == 2  # off by default
    sure = labels_from_probabilities(probabilities, InstanceOptions(min_confidence=0.8))
    assert sure.max() == 1 and (sure > 0).sum() == (labels == 1).sum()


def recursive_split(marker, interior, levels, min_size):
    """Reference for split_markers: one marker, level by level, recursively."""
    from scipy import ndimage

    for index, level in enumerate(levels):
        cores, found = ndimage.label(marker & (interior > level))
        sizes = np.bincount(cores.ravel(), minlength=found + 1)[1:]
        big = np.flatnonzero(sizes >= min_size) + 1
        if len(big) >= 2:
            return [part for value in big
                    for part in recursive_split(cores == value, interior, levels[index + 1:],
                                                min_size)]
    return [marker]


def global_watershed_reference(probabilities, options):
    """The straightforward whole-image version (watershed over all regions at once)."""
    from scipy import ndimage
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    foreground = probabilities[..., 0] < 255 - round(options.foreground_threshold * 255)
    foreground = ndimage.binary_fill_holes(foreground)
    interior = probabilities[..., 1]
    seeds = label((interior > round(options.marker_threshold * 255)) & foreground,
                  connectivity=1)
    levels = [round(level * 255) for level in options.split_levels]
    markers = np.zeros_like(seeds)
    for value in range(1, seeds.max() + 1):
        for part in recursive_split(seeds == value, interior, levels, options.min_split_size):
            markers[part] = markers.max() + 1
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


def compare_with_reference(seed):
    """Checks labels_from_probabilities against the whole-image reference, with and without
    splitting, on smooth random probabilities; returns how many nuclei splitting added."""
    from scipy import ndimage

    from nucleiseg.algorithms.instances import quantise_probabilities

    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(120, 90, 3)), (3, 3, 0)) * 12
    probabilities = quantise_probabilities(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    options = InstanceOptions(foreground_threshold=0.5, marker_threshold=0.6, min_size=4,
                              split_levels=(0.8, 0.9), min_split_size=6)
    labels = labels_from_probabilities(probabilities, options)
    reference = global_watershed_reference(probabilities, options)
    assert labels.max() == reference.max() > 3
    assert same_partition(labels, reference)
    unsplit = labels_from_probabilities(probabilities, dataclasses.replace(options,
                                                                           split_levels=()))
    assert same_partition(unsplit, global_watershed_reference(
        probabilities, dataclasses.replace(options, split_levels=())))
    return labels.max() - unsplit.max()


@pytest.mark.parametrize("seed", range(4))
def test_region_by_region_equals_one_whole_image_watershed(seed):
    """Processing each foreground region in its own box (seeds split level by level) gives
    the same nuclei as a watershed over the whole image, numbered in another order."""
    compare_with_reference(seed)


def test_the_reference_comparison_covers_splits():
    assert sum(compare_with_reference(seed) for seed in range(4)) > 0


def test_measurements_match_scikit_image_regionprops():
    from skimage.measure import regionprops_table

    from nucleiseg.algorithms.instances import COLUMNS

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

    from nucleiseg.algorithms.instances import fill_holes

    mask = np.random.default_rng(seed).random((60, 50)) < 0.55
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))

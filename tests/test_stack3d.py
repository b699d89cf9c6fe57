"""3-D nuclei stitched from per-plane 2-D labels, and their 3-D measurements."""

from __future__ import annotations

import numpy as np
import pytest

from nucleiseg.algorithms.stack3d import measure_3d, stitch_planes

# (centre z, y, x), (radius z, y, x): flat and tall ones, a pair touching in-plane (x 20 | 36),
# a pair one above the other with a gap between them (z 1-5 | 9-15)
ELLIPSOIDS = [
    ((10, 40, 20), (4, 8, 8)), ((10, 40, 36), (4, 8, 8)),
    ((3, 14, 60), (2, 7, 7)), ((12, 14, 60), (3, 7, 7)),
    ((6, 66, 14), (2, 8, 12)), ((14, 66, 40), (5, 6, 6)),
    ((9, 64, 64), (3, 10, 7)), ((16, 14, 18), (2, 9, 9)),
    ((4, 16, 36), (3, 5, 5)), ((15, 40, 64), (4, 6, 9)),
]


def make_ellipsoids(shape=(20, 80, 80)):
    """Z x H x W ground-truth labels 1..N; touching voxels go to the earlier ellipsoid."""
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.int32)
    for label, ((cz, cy, cx), (rz, ry, rx)) in enumerate(ELLIPSOIDS, start=1):
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[inside & (labels == 0)] = label
    return labels


def per_plane_labels(labels3d, seed=0, jitter=False, min_size=15):
    """What a 2-D model gives: unrelated, gappy ids in every plane, no objects under
    `min_size` pixels (the one-pixel tips of the ellipsoids), optionally shifted by 1 px."""
    rng = np.random.default_rng(seed)
    planes = np.zeros_like(labels3d)
    for z, plane in enumerate(labels3d):
        ids, sizes = np.unique(plane[plane > 0], return_counts=True)
        plane = np.where(np.isin(plane, ids[sizes < min_size]), 0, plane)
        ids = ids[sizes >= min_size]
        lookup = np.zeros(labels3d.max() + 1, np.int32)
        lookup[ids] = rng.permutation(len(ids)) * 3 + 5
        planes[z] = lookup[plane]
        if jitter:
            planes[z] = np.roll(planes[z], rng.integers(-1, 2, size=2), axis=(0, 1))
    return planes


def matched_fraction(truth, found, min_iou=0.5):
    """Share of true objects whose best found object has IoU >= min_iou (numpy only)."""
    true_ids, true_index = np.unique(truth, return_inverse=True)
    found_ids, found_index = np.unique(found, return_inverse=True)
    pairs = np.bincount(true_index.ravel() * len(found_ids) + found_index.ravel(),
                        minlength=len(true_ids) * len(found_ids))
    overlap = pairs.reshape(len(true_ids), len(found_ids))[true_ids > 0][:, found_ids > 0]
    truth_sizes = np.bincount(true_index.ravel())[true_ids > 0][:, None]
    found_sizes = np.bincount(found_index.ravel())[found_ids > 0][None, :]
    union = truth_sizes + found_sizes - overlap
    return np.mean((overlap / union).max(1) >= min_iou)


def test_stitching_gives_one_label_per_ellipsoid():
    truth = make_ellipsoids()
    planes = per_plane_labels(truth)
    stitched = stitch_planes(planes)
    assert stitched.dtype == np.int32
    assert np.array_equal(np.unique(stitched), np.arange(len(ELLIPSOIDS) + 1))
    assert matched_fraction(truth, stitched) == 1.0
    # same partition as the truth where the planes found something: one stitched id per true id
    found = planes > 0
    pairs = np.unique(np.stack([truth[found], stitched[found]]), axis=1)
    assert pairs.shape[1] == len(ELLIPSOIDS)


def test_one_pixel_tips_become_their_own_objects():
    """The documented limit: a tip's IoU with the next plane's section is tiny."""
    truth = make_ellipsoids()
    stitched = stitch_planes(per_plane_labels(truth, min_size=1))
    assert stitched.max() > len(ELLIPSOIDS)
    assert matched_fraction(truth, stitched) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_stitching_survives_one_pixel_shifts_between_planes(seed):
    truth = make_ellipsoids()
    planes = per_plane_labels(truth, seed=seed, jitter=True)
    stitched = stitch_planes(planes)
    assert matched_fraction(truth, stitched) >= 0.95
    assert np.array_equal(stitched > 0, planes > 0)


def test_ids_are_consecutive_and_linking_is_one_to_one():
    planes = np.zeros((2, 10, 20), np.int32)
    planes[0, 2:8, 2:18] = 40  # one wide nucleus over two halves of similar overlap
    planes[1, 2:8, 2:10] = 7
    planes[1, 2:8, 10:18] = 9
    stitched = stitch_planes(planes)
    assert np.array_equal(np.unique(stitched), [0, 1, 2])
    assert np.array_equal(np.unique(stitched[1][stitched[1] > 0]), [1, 2])  # no shared id


def test_low_overlap_starts_a_new_nucleus():
    planes = np.zeros((2, 10, 10), np.int32)
    planes[0, 0:4, 0:4] = 1
    planes[1, 2:6, 2:6] = 1  # IoU 4 / 28
    assert stitch_planes(planes, min_iou=0.25).max() == 2
    assert stitch_planes(planes, min_iou=0.1).max() == 1


def test_single_plane_with_label_gaps_and_empty_stack():
    plane = np.zeros((1, 12, 12), np.int64)
    plane[0, 1:4, 1:4], plane[0, 6:9, 6:9], plane[0, 9:11, 1:3] = 1000, 3, 77
    stitched = stitch_planes(plane)
    assert np.array_equal(np.unique(stitched), [0, 1, 2, 3])
    assert np.array_equal(stitched > 0, plane > 0)
    empty = np.zeros((3, 8, 8), np.uint16)
    assert not stitch_planes(empty).any()
    assert measure_3d(stitch_planes(empty)) == []
    with pytest.raises(ValueError, match="Z x H x W"):
        stitch_planes(np.zeros((8, 8), np.int32))


def test_measure_3d_matches_numpy_with_anisotropic_spacing():
    truth = make_ellipsoids()
    truth[truth == 3] = 50  # gap in ids
    spacing = (2.0, 0.5, 0.25)
    rows = measure_3d(truth, spacing=spacing)
    assert [row["label"] for row in rows] == sorted(int(i) for i in np.unique(truth) if i)
    for row in rows:
        z, y, x = np.nonzero(truth == row["label"])
        assert row["voxels"] == z.size
        assert row["volume_um3"] == pytest.approx(z.size * 2.0 * 0.5 * 0.25)
        assert (row["z_min"], row["z_max"]) == (z.min(), z.max())
        assert row["z_extent"] == z.max() - z.min() + 1
        assert row["z_extent_um"] == pytest.approx(row["z_extent"] * 2.0)
        for axis, coordinate, step in zip("zyx", (z, y, x), spacing):
            assert row[f"centroid_{axis}"] == pytest.approx(coordinate.mean())
            assert row[f"centroid_{axis}_um"] == pytest.approx(coordinate.mean() * step)
    assert "volume_um3" not in measure_3d(truth)[0]
    flat = next(row for row in rows if row["label"] == 50)
    assert flat["z_extent"] == 5  # radius 2 planes around z 3

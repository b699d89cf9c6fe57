"""Outlines for QuPath (GeoJSON) and Fiji (ImageJ ROI sets), checked by reading them back and
rasterising them onto the pixel grid (a pixel is inside when its centre is, holes even-odd)."""

import json

import numpy as np
import pytest
from conftest import make_disks

from nucleiseg.io.outlines import (
    imagej_rois,
    nucleus_features,
    outline_polygons,
    signed_area,
    trace_rings,
    write_exports,
    write_geojson,
    write_imagej_rois,
)


def rasterise(rings, shape) -> np.ndarray:
    """Pixels whose centres lie inside the rings (even-odd: a ring inside another is a hole)."""
    from skimage.draw import polygon

    inside = np.zeros(shape, bool)
    for ring in rings:
        ring = np.asarray(ring, np.float64)
        rows, cols = polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)  # centres at +0.5
        mask = np.zeros(shape, bool)
        mask[rows, cols] = True
        inside ^= mask
    return inside


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def assert_outlines_match(labels, rings_of: dict):
    """Every nucleus of `labels` has outlines, none more, and they rasterise back to it."""
    assert sorted(rings_of) == sorted(set(np.unique(labels)) - {0})
    for label, rings in rings_of.items():
        back = rasterise(rings, labels.shape)
        assert iou(back, labels == label) >= 0.95, label  # what the issue asks...
        np.testing.assert_array_equal(back, labels == label)  # ...and it is exact


def tricky_labels() -> np.ndarray:
    """Disks, two touching disks, a ring (a nucleus with a hole) around a small nucleus, a
    one-pixel nucleus, nuclei at the image borders and corner, and one label in two pieces that
    touch only at a corner."""
    labels = np.zeros((48, 60), np.int32)
    yy, xx = np.mgrid[:48, :60]
    labels[(yy - 10) ** 2 + (xx - 10) ** 2 <= 36] = 1
    labels[(yy - 10) ** 2 + (xx - 22) ** 2 <= 36] = 2  # touches 1 (columns 16 | 17)
    labels[(yy - 10) ** 2 + (xx - 33) ** 2 <= 25] = 3
    labels[(yy - 10) ** 2 + (xx - 28) ** 2 <= 4] = 2  # 2 overlaps 3: they share a border
    ring = (yy - 30) ** 2 + (xx - 20) ** 2
    labels[(ring <= 64) & (ring > 9)] = 4
    labels[ring <= 1] = 5  # inside 4's hole, apart from it
    labels[40, 40] = 6  # one pixel
    labels[0:5, 50:60] = 7  # the top border and the right border's corner
    labels[44:48, 0:3] = 8  # the bottom-left corner
    labels[20, 45] = labels[21, 46] = 9  # two pieces meeting at one corner
    labels[22, 46:49] = 9
    return labels


def test_one_pixel_nucleus_is_a_unit_square_counterclockwise_with_y_up():
    labels = np.zeros((3, 4), np.uint16)
    labels[1, 2] = 1
    [[ring]] = outline_polygons(labels)[1]
    assert ring.tolist() == [[2, 1], [3, 1], [3, 2], [2, 2]]
    assert signed_area(ring) == 1.0


def test_outlines_trace_tricky_labels_exactly():
    labels = tricky_labels()
    outlines = outline_polygons(labels)
    assert_outlines_match(labels, {label: [ring for polygon in polygons for ring in polygon]
                                   for label, polygons in outlines.items()})
    assert len(outlines[4]) == 1 and len(outlines[4][0]) == 2  # exterior and its hole
    assert signed_area(outlines[4][0][0]) > 0 > signed_area(outlines[4][0][1])
    assert len(outlines[9]) == 2  # two pieces: a MultiPolygon in GeoJSON
    for label in (1, 3, 5, 6, 7, 8):
        assert len(outlines[label]) == 1 and len(outlines[label][0]) == 1
    area = sum(signed_area(ring) for ring in outlines[4][0])
    assert area == np.count_nonzero(labels == 4)
    # corners only: a 10 x 5 rectangle at the border is 4 corners
    assert sorted(outlines[7][0][0].tolist()) == [[50, 0], [50, 5], [60, 0], [60, 5]]


def test_outlines_of_random_labels_are_exact_and_never_touch_themselves():
    rng = np.random.default_rng(3)
    for _ in range(150):
        shape = tuple(rng.integers(1, 14, 2))
        labels = rng.integers(0, 4, shape) * (rng.random(shape) < rng.random())
        outlines = outline_polygons(labels)
        assert_outlines_match(labels, {label: [ring for polygon in polygons for ring in polygon]
                                       for label, polygons in outlines.items()})
        for polygons in outlines.values():
            for polygon in polygons:
                assert signed_area(polygon[0]) > 0
                assert all(signed_area(hole) < 0 for hole in polygon[1:])
                for ring in polygon:  # a valid ring visits no corner twice
                    assert len({tuple(v) for v in ring.tolist()}) == len(ring)


def test_pinch_inside_one_piece_makes_a_hole_touching_the_exterior():
    # A U of pixels closed at one corner: the pixel it encloses is a hole touching the exterior
    # at that corner (valid in GeoJSON), not an exterior that touches itself.
    mask = np.array([[1, 1, 1],
                     [1, 0, 1],
                     [1, 1, 0]], bool)
    rings = trace_rings(mask)
    assert sorted(signed_area(r) for r in rings) == [-1.0, 8.0]
    np.testing.assert_array_equal(rasterise(rings, mask.shape), mask)


def read_geojson_rings(path) -> dict:
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    rings = {}
    for feature in collection["features"]:
        geometry = feature["geometry"]
        polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                    else geometry["coordinates"])
        for polygon in polygons:
            for ring in polygon:
                assert ring[0] == ring[-1] and len(ring) >= 5  # closed, at least a square
        rings[feature["properties"]["label"]] = [ring for polygon in polygons for ring in polygon]
    return rings


def test_geojson_features_read_back_as_the_labels_with_measurements(tmp_path):
    from nucleiseg.algorithms.instances import measure_nuclei

    labels = tricky_labels()
    image = np.full(labels.shape, 10, np.uint8)
    rows = measure_nuclei(labels, image)
    features = nucleus_features(labels, rows)
    write_geojson(tmp_path / "a.geojson", features)
    assert_outlines_match(labels, read_geojson_rings(tmp_path / "a.geojson"))
    collection = json.loads((tmp_path / "a.geojson").read_text())
    by_label = {f["properties"]["label"]: f for f in collection["features"]}
    assert by_label[4]["geometry"]["type"] == "Polygon"
    assert len(by_label[4]["geometry"]["coordinates"]) == 2  # with its hole
    assert by_label[9]["geometry"]["type"] == "MultiPolygon"
    properties = by_label[6]["properties"]
    assert properties["objectType"] == "detection" and properties["name"] == "6"
    assert properties["classification"]["name"] == "Nucleus"
    assert properties["measurements"]["area"] == 1
    assert properties["measurements"]["mean_intensity"] == 10
    assert "label" not in properties["measurements"]
    assert "plane" not in by_label[6]["geometry"]  # a 2-D image: QuPath's default plane


def test_geojson_and_rois_of_an_image_without_nuclei_are_empty(tmp_path):
    labels = np.zeros((8, 8), np.uint16)
    write_geojson(tmp_path / "none.geojson", nucleus_features(labels))
    assert json.loads((tmp_path / "none.geojson").read_text())["features"] == []
    write_imagej_rois(tmp_path / "none_rois.zip", imagej_rois(labels))
    import zipfile

    assert zipfile.ZipFile(tmp_path / "none_rois.zip").namelist() == []


def roi_rings(roi) -> list:
    return roi.coordinates(multi=True) if roi.composite else [roi.coordinates()]


def test_imagej_rois_read_back_with_roifile_as_the_labels(tmp_path):
    import roifile

    labels = tricky_labels()
    write_imagej_rois(tmp_path / "a_rois.zip", imagej_rois(labels))
    rois = roifile.roiread(tmp_path / "a_rois.zip")
    assert [roi.name for roi in rois] == [str(label) for label in range(1, 10)]
    assert_outlines_match(labels, {int(roi.name): roi_rings(roi) for roi in rois})
    kinds = {int(roi.name): roi.roitype for roi in rois}
    assert kinds[1] == roifile.ROI_TYPE.TRACED  # one outline along pixel edges
    assert rois[3].composite and rois[8].composite  # the ring with its hole; two pieces
    rows, cols = np.nonzero(labels == 1)  # ImageJ's bounds: pixel corners, right exclusive
    assert (rois[0].left, rois[0].top, rois[0].right, rois[0].bottom) == (
        cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert all(roi.position == 0 for roi in rois)


def test_stack_exports_carry_their_planes(tmp_path):
    import roifile

    from nucleiseg.pipeline.one_file import measure_planes

    first, _ = make_disks((40, 40), count=3, seed=1)
    second, _ = make_disks((40, 40), count=4, seed=2)
    labels = np.stack([make_disks((40, 40), count=3, seed=1)[1],
                       make_disks((40, 40), count=4, seed=2)[1]])
    planes = np.stack([first, second])[..., None]
    rows = measure_planes(labels, planes, "Z", (2,), (0.5, 0.5))
    paths = {"geojson": tmp_path / "s.geojson", "imagej-rois": tmp_path / "s_rois.zip"}
    write_exports(paths, labels, rows, "Z", (2,))
    features = json.loads(paths["geojson"].read_text())["features"]
    counts = [int(plane.max()) for plane in labels]
    assert min(counts) >= 2 and len(features) == sum(counts)
    for feature in features:
        plane = feature["properties"]["plane"]
        assert feature["properties"]["z"] == plane and "t" not in feature["properties"]
        assert feature["geometry"]["plane"] == {"c": -1, "z": plane, "t": 0}
        label = feature["properties"]["label"]
        assert feature["properties"]["measurements"]["area_um2"] == pytest.approx(
            0.25 * np.count_nonzero(labels[plane] == label))
        [ring] = feature["geometry"]["coordinates"]
        np.testing.assert_array_equal(rasterise([ring], labels.shape[1:]),
                                      labels[plane] == label)
    rois = roifile.roiread(paths["imagej-rois"])
    assert [roi.name for roi in rois] == [f"{plane:04d}-{label}" for plane in (1, 2)
                                          for label in range(1, counts[plane - 1] + 1)]
    for roi in rois:
        label = int(roi.name.split("-")[1])
        np.testing.assert_array_equal(rasterise(roi_rings(roi), labels.shape[1:]),
                                      labels[roi.position - 1] == label)

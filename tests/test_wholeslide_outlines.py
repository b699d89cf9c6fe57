"""Outlines of huge images (--geojson, --imagej-rois), written nucleus by nucleus as blocks are
done: the same outlines as for the image read whole, each nucleus once (seams included), and
nothing half-written when a run fails."""

import json
import math
import zipfile

import numpy as np
import pytest
from test_blocks import (
    CONFIG,
    OPTIONS,
    POINTWISE,
    read_rows,
    rgb_disks,
    small_blocks,  # noqa: F401 (a fixture)
    write_pyramid,
)
from test_exchange import rasterise, roi_rings

from nucleiseg.io.outlines import RoiZip
from nucleiseg.pipeline.run import predict_files

EXPORTS = ("geojson", "imagej-rois")


def predict(image_path, out, blockwise_pixels):
    return predict_files(POINTWISE, {"config": CONFIG}, [image_path], out, options=OPTIONS,
                         progress=lambda _: None, exports=EXPORTS,
                         blockwise_pixels=blockwise_pixels)


def features_of(path) -> dict:
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    return {feature["properties"]["label"]: feature for feature in collection["features"]}


def rings_of(geometry) -> list:
    polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                else geometry["coordinates"])
    return [ring for polygon in polygons for ring in polygon]


def inside(rings, labels, label) -> tuple[np.ndarray, np.ndarray]:
    """(the rings rasterised, the nucleus's pixels) over the nucleus's bounding box."""
    rows, cols = np.nonzero(labels == label)
    top, left = rows.min(), cols.min()
    box = labels[top:rows.max() + 1, left:cols.max() + 1] == label
    shifted = [np.asarray(ring, np.float64) - (left, top) for ring in rings]
    return rasterise(shifted, box.shape), box


def test_huge_image_outlines_are_the_whole_image_outlines_each_nucleus_once(
        tmp_path, small_blocks):  # noqa: F811
    import roifile
    import tifffile

    image = rgb_disks()
    tifffile.imwrite(tmp_path / "whole.tif", image)
    predict(tmp_path / "whole.tif", tmp_path / "whole", blockwise_pixels=10**12)
    slide = write_pyramid(tmp_path / "slide.tif", image)
    [result] = predict(slide, tmp_path / "out", blockwise_pixels=0)
    assert result.error is None
    labels = tifffile.imread(tmp_path / "out" / "slide_labels.tif")
    count = int(labels.max())
    assert count == result.nuclei > 200

    features = features_of(tmp_path / "out" / "slide.geojson")
    assert sorted(features) == list(range(1, count + 1))  # one per nucleus, the same ids
    rows = {int(row["label"]): row for row in read_rows(tmp_path / "out" / "measurements.csv")}
    seams = 0
    for label, feature in features.items():
        assert feature["properties"]["objectType"] == "detection"
        drawn, pixels = inside(rings_of(feature["geometry"]), labels, label)
        np.testing.assert_array_equal(drawn, pixels)  # traced in full-image pixels
        measured = feature["properties"]["measurements"]
        assert all(math.isclose(measured[key], float(rows[label][key]), rel_tol=1e-9)
                   for key in ("area", "centroid_y", "centroid_x", "eccentricity"))
        rows_at, cols_at = np.nonzero(labels == label)
        seams += (rows_at.min() // 256 != rows_at.max() // 256
                  or cols_at.min() // 256 != cols_at.max() // 256)
    assert seams >= 10  # nuclei cut by the 256 px block seams, each one feature

    whole = features_of(tmp_path / "whole" / "whole.geojson")
    assert sorted(json.dumps(f["geometry"]) for f in whole.values()) == \
        sorted(json.dumps(f["geometry"]) for f in features.values())  # the very same polygons
    assert {key for f in whole.values() for key in f["properties"]["measurements"]} == \
        {key for f in features.values() for key in f["properties"]["measurements"]}

    rois = roifile.roiread(tmp_path / "out" / "slide_rois.zip")
    assert sorted(int(roi.name) for roi in rois) == list(range(1, count + 1))
    for roi in rois[::7]:
        drawn, pixels = inside(roi_rings(roi), labels, int(roi.name))
        np.testing.assert_array_equal(drawn, pixels)
    whole_rois = roifile.roiread(tmp_path / "whole" / "whole_rois.zip")
    assert sorted(roi.coordinates().tobytes() for roi in whole_rois) == \
        sorted(roi.coordinates().tobytes() for roi in rois)


def test_a_huge_image_failing_mid_run_leaves_no_outline_files(tmp_path, small_blocks,  # noqa: F811
                                                              monkeypatch):
    from nucleiseg.errors import file_error
    from nucleiseg.io.outlines import OutlineFiles
    from nucleiseg.io.wholeslide import LargeImage

    added, reads = [], []
    add, read = OutlineFiles.add, LargeImage.read

    def failing_read(self, *window):  # the 7th block of 12 (3 rows of 4) cannot be read
        reads.append(window)
        if len(reads) == 7:
            raise file_error(self.path, "a damaged tile")
        return read(self, *window)

    monkeypatch.setattr(OutlineFiles, "add",
                        lambda self, *nucleus: added.append(1) or add(self, *nucleus))
    monkeypatch.setattr(LargeImage, "read", failing_read)
    slide = write_pyramid(tmp_path / "slide.tif", rgb_disks())
    [result] = predict(slide, tmp_path / "out", blockwise_pixels=0)
    assert result.error == f"{slide}: a damaged tile"
    assert added  # the first row of blocks' outlines were written when the read failed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["measurements.csv",
                                                                   "summary.csv"]


def test_roi_sets_past_65535_rois_are_zip64(tmp_path):
    class Tiny:
        def __init__(self, name):
            self.name = name

        def tobytes(self):
            return b"Iout"

    count = 65_600
    archive = RoiZip(tmp_path / "many_rois.zip")
    for index in range(count):
        archive.add(Tiny(str(index + 1)))
    archive.commit()
    with zipfile.ZipFile(tmp_path / "many_rois.zip") as done:
        names = done.namelist()
    assert len(names) == count and names[-1] == f"{count}.roi"
    assert b"PK\x06\x06" in (tmp_path / "many_rois.zip").read_bytes()[-200:]  # ZIP64 record
    assert [p.name for p in tmp_path.iterdir()] == ["many_rois.zip"]


def test_a_failed_outline_file_is_removed_and_names_itself(tmp_path):
    archive = RoiZip(tmp_path / "a_rois.zip")
    with pytest.raises(AttributeError):
        archive.add(object())  # not a ROI
    archive.discard()
    assert list(tmp_path.iterdir()) == []

"""The public API (nucleiseg.segment, nucleiseg.measure, nucleiseg.Segmenter; docs/api.md)."""

import subprocess
import sys

import numpy as np
import pytest

import nucleiseg
from nucleiseg.algorithms.instances import COLUMNS, MICRON_COLUMNS
from nucleiseg.inference.predict import segment_checked
from nucleiseg.io.images import bundled_sample, read_image


@pytest.fixture(scope="module")
def image():
    return read_image(bundled_sample("test") / "images" / "fluorescence_df53d0b6.png")


def test_import_nucleiseg_is_cheap():
    code = ("import sys, nucleiseg; print(sorted(m for m in ('numpy', 'tensorflow', 'keras', "
            "'onnxruntime', 'nucleiseg.inference.segmenter') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
    assert {"segment", "measure", "Segmenter"} <= set(dir(nucleiseg))


def test_segment_is_predict_on_one_image(image, bundled_engine):
    labels, info = nucleiseg.segment(image)
    engine, record = bundled_engine
    bound = nucleiseg.Segmenter.of(engine, record)  # the model's own options, as predict
    expected = segment_checked(engine, image, record["config"], bound.options,
                               bound.instance_options)[0]
    assert labels.dtype == np.int32 and np.array_equal(labels, expected) and labels.max() > 10
    assert set(info) == {"diameter", "scale", "confidence", "uncertain", "warning"}


def test_a_segmenter_binds_its_options_once(image, bundled_engine):
    engine, record = bundled_engine
    segmenter = nucleiseg.Segmenter.of(engine, record, diameter=None, scale=0.5, min_size=5)
    assert segmenter.options.diameter is None and segmenter.options.scale == 0.5
    assert segmenter.instance_options.min_size == 5
    labels, info = segmenter(image)
    assert info["scale"] == 0.5 and labels.max() > 0
    assert segmenter.with_engine(None).engine is None  # what is sent to a Dask worker


def test_measure_gives_one_row_per_nucleus(image):
    labels = np.zeros(image.shape[:2], np.int32)
    labels[2:6, 3:8], labels[10:13, 10:12] = 1, 2
    rows = nucleiseg.measure(labels, image[..., 0])
    assert [row["label"] for row in rows] == [1, 2] and set(rows[0]) == set(COLUMNS)
    assert rows[0]["area"] == 20
    microns = nucleiseg.measure(labels, image, pixel_size=(0.5, 0.5))
    assert microns[0]["area_um2"] == 5.0 and set(MICRON_COLUMNS) <= set(microns[0])

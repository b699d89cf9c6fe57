"""Per-object channel intensities against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from test_cells import make_three_channels

from nucleiseg.algorithms.cells import cells_from_channel
from nucleiseg.algorithms.intensity import (
    channel_column_names,
    channel_measurements,
    compartment_measurements,
)

NAMES = ["DAPI", "Alexa 488", "CellMask Deep-Red"]
COLUMNS = ["dapi", "alexa_488", "cellmask_deep_red"]


def expected(image, labels, label, prefix=""):
    """What the columns must hold, computed the plain way."""
    inside = labels == label
    row = {}
    for c, column in enumerate(COLUMNS):
        values = image[..., c][inside]
        row[f"{prefix}{column}_mean"] = values.mean() if values.size else np.nan
        row[f"{prefix}{column}_median"] = np.median(values) if values.size else np.nan
        row[f"{prefix}{column}_integrated"] = values.sum()
    return row


def assert_rows_match(found, wanted):
    assert set(wanted) <= set(found)
    for key, value in wanted.items():
        np.testing.assert_allclose(found[key], value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_channel_column_names_are_safe_unique_identifiers():
    names = ["DAPI", "Alexa 488", None, "", "dapi", "488 nm", "  GFP (ex) "]
    assert channel_column_names(names) == ["dapi", "alexa_488", "ch2", "ch3", "dapi_2",
                                           "ch_488_nm", "gfp_ex"]
    assert channel_column_names(None, 2) == ["ch0", "ch1"]
    assert channel_column_names(["a", "a", "a_2"]) == ["a", "a_2", "a_2_2"]
    with pytest.raises(ValueError, match="2 channel names for 3"):
        channel_column_names(["a", "b"], 3)


@pytest.mark.parametrize("as_list", [False, True])
def test_channel_measurements_match_numpy(as_list):
    image, nuclei, _ = make_three_channels(seed=3, label_gaps=True)
    channels = [image[..., c] for c in range(3)] if as_list else image
    measured = channel_measurements(nuclei, channels, NAMES, prefix="nucleus_")
    assert sorted(measured) == sorted(int(i) for i in np.unique(nuclei) if i)
    for label, row in measured.items():
        assert len(row) == 9
        assert_rows_match(row, expected(image, nuclei, label, "nucleus_"))


def test_unnamed_single_channel_and_integer_image():
    image, nuclei, _ = make_three_channels(seed=4)
    dapi = np.clip(image[..., 0], 0, 255).astype(np.uint8)
    measured = channel_measurements(nuclei, dapi)
    label = int(nuclei.max())
    values = dapi[nuclei == label].astype(np.float64)
    assert measured[label] == pytest.approx({"ch0_mean": values.mean(),
                                             "ch0_median": np.median(values),
                                             "ch0_integrated": values.sum()})


def test_compartment_measurements_match_numpy():
    image, nuclei, _ = make_three_channels(seed=5, label_gaps=True)
    cells = cells_from_channel(nuclei, image[..., 1], max_distance=15)
    cytoplasm = np.where(cells == nuclei, 0, cells)
    measured = compartment_measurements(nuclei, cells, image, NAMES)
    assert sorted(measured) == sorted(int(i) for i in np.unique(nuclei) if i)
    for label, row in measured.items():
        for compartment, labels in [("nucleus", nuclei), ("cell", cells),
                                    ("cytoplasm", cytoplasm)]:
            assert_rows_match(row, expected(image, labels, label, f"{compartment}_"))
            assert row[f"{compartment}_pixels"] == np.sum(labels == label)
        assert row["cell_pixels"] == row["nucleus_pixels"] + row["cytoplasm_pixels"]


def test_cell_without_cytoplasm_gets_nan_means_and_zero_integrated():
    nuclei = np.zeros((12, 12), np.int32)
    nuclei[2:5, 2:5] = 4
    nuclei[7:10, 7:10] = 9
    cells = nuclei.copy()
    cells[6:11, 6:11] = 9  # only cell 9 has cytoplasm
    image = np.arange(144, dtype=float).reshape(12, 12)
    row4, row9 = (compartment_measurements(nuclei, cells, image, ["GFP"])[i] for i in (4, 9))
    assert np.isnan(row4["cytoplasm_gfp_mean"]) and np.isnan(row4["cytoplasm_gfp_median"])
    assert row4["cytoplasm_gfp_integrated"] == 0 and row4["cytoplasm_pixels"] == 0
    assert row4["cell_gfp_mean"] == pytest.approx(image[nuclei == 4].mean())
    assert row9["cytoplasm_pixels"] == 25 - 9


def test_no_nuclei_gives_empty_results():
    empty = np.zeros((8, 8), np.int32)
    image = np.ones((8, 8, 2))
    assert channel_measurements(empty, image, ["a", "b"]) == {}
    assert compartment_measurements(empty, empty, image, ["a", "b"]) == {}


def test_mismatched_shapes_are_refused():
    labels = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="H x W x C"):
        channel_measurements(labels, np.ones((3, 8, 8)))
    with pytest.raises(ValueError, match="differs"):
        channel_measurements(labels, [np.ones((8, 8)), np.ones((4, 4))])
    with pytest.raises(ValueError, match="differs"):
        compartment_measurements(labels, np.zeros((4, 4), np.int32), np.ones((8, 8)))

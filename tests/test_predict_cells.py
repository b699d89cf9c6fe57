"""predict --cells and --measure-channels: cells around the nuclei and intensities of the
original channels, on OME-TIFFs made here (a stub engine that thresholds bright pixels stands
in for the model)."""

import csv

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from nucleiseg.algorithms.cells import cells_from_channel, expand_nuclei
from nucleiseg.algorithms.instances import InstanceOptions
from nucleiseg.inference.engines import Engine
from nucleiseg.inference.predict import PredictOptions
from nucleiseg.io.microscopy import CellsSpec, ReadOptions, parse_cells, parse_channel_list
from nucleiseg.pipeline.run import predict_files

CONFIG = {"sampling": "crops", "image_size": 64}
OPTIONS = PredictOptions(tile=128, overlap=32)
POST = InstanceOptions(min_size=5, split_levels=(), min_confidence=0.0)
CENTRES = [(20, 20), (20, 70), (70, 25), (72, 72)]


def threshold_engine() -> Engine:
    def predict_logits(tiles):
        nucleus = (tiles.mean(axis=-1) > 0.5).astype(np.float32) * 20 - 10
        return np.stack([-nucleus, nucleus], axis=-1)

    return Engine("threshold", predict_logits, 2)


def cell_image(path, size=0.5):
    """A C x Y x X OME-TIFF: DAPI (disks of radius 6), Actin (disks of radius 13 around them)
    and a third unnamed-looking channel, all with noise."""
    rng = np.random.default_rng(1)
    dapi = rng.integers(0, 50, (96, 96)).astype(np.uint16)
    actin = rng.integers(0, 50, (96, 96)).astype(np.uint16)
    for centre in CENTRES:
        actin[disk(centre, 13, shape=actin.shape)] += 600
        dapi[disk(centre, 6, shape=dapi.shape)] += 2000
    other = rng.integers(0, 4000, (96, 96)).astype(np.uint16)
    data = np.stack([dapi, actin, other])
    metadata = {"axes": "CYX", "Channel": {"Name": ["DAPI", "Actin", "488 nm"]}}
    if size is not None:
        metadata.update(PhysicalSizeX=size, PhysicalSizeY=size)
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return data


def predict(tmp_path, image, **reading):
    out = tmp_path / "out"
    results = predict_files(threshold_engine(), {"config": CONFIG}, [image], out,
                            options=OPTIONS, instance_options=POST, progress=lambda _: None,
                            read_options=ReadOptions(channel="DAPI", **reading))
    rows = []
    if (out / "measurements.csv").exists():
        with open(out / "measurements.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    return results[0], out, rows


def test_parse_cells_and_channel_lists():
    assert parse_cells("5") == CellsSpec(distance=5.0)
    assert parse_cells("channel:Actin") == CellsSpec(channel="Actin")
    assert parse_cells("channel:1:12.5") == CellsSpec(channel=1, max_distance=12.5)
    assert parse_cells("channel:a:b") == CellsSpec(channel="a:b")
    for bad in ("x", "-1", "channel:", "channel:1:-2"):
        with pytest.raises(ValueError):
            parse_cells(bad)
    assert parse_channel_list("all") == "all"
    assert parse_channel_list("0, Actin") == (0, "Actin")


def test_cells_grow_by_a_distance_in_micrometres(tmp_path):
    cell_image(tmp_path / "a.ome.tif", size=0.5)
    result, out, rows = predict(tmp_path, tmp_path / "a.ome.tif", cells=CellsSpec(distance=2.0))
    assert result.error is None and result.nuclei == len(CENTRES)
    nuclei = tifffile.imread(out / "a_labels.tif")
    cells = tifffile.imread(out / "a_cells.tif")
    np.testing.assert_array_equal(cells, expand_nuclei(nuclei, 2.0, spacing=(0.5, 0.5)))
    assert set(np.unique(cells)) == set(np.unique(nuclei))
    areas = np.bincount(cells.ravel())
    for row in rows:
        label = int(row["label"])
        assert int(row["cell_area"]) == areas[label] > float(row["area"])
        assert float(row["cell_area_um2"]) == pytest.approx(areas[label] * 0.25)


def test_cells_grow_within_a_channel_named_in_the_metadata(tmp_path):
    data = cell_image(tmp_path / "a.ome.tif", size=None)
    result, out, rows = predict(tmp_path, tmp_path / "a.ome.tif",
                                cells=CellsSpec(channel="actin", max_distance=20))
    assert result.error is None
    nuclei = tifffile.imread(out / "a_labels.tif")
    cells = tifffile.imread(out / "a_cells.tif")
    np.testing.assert_array_equal(cells, cells_from_channel(nuclei, data[1], 20))
    assert all(int(row["cell_area"]) > 400 and row["cell_area_um2"] == "" for row in rows)


def test_a_missing_cell_channel_names_the_channels_there_are(tmp_path):
    cell_image(tmp_path / "a.ome.tif")
    result, out, rows = predict(tmp_path, tmp_path / "a.ome.tif",
                                cells=CellsSpec(channel="Tubulin"))
    assert "--cells channel: 'Tubulin'" in result.error
    assert "0 (DAPI), 1 (Actin), 2 (488 nm)" in result.error
    assert rows == [] and not (out / "a_cells.tif").exists()


def test_channel_intensities_equal_numpy(tmp_path):
    data = cell_image(tmp_path / "a.ome.tif")
    result, out, rows = predict(tmp_path, tmp_path / "a.ome.tif", measure_channels="all")
    assert result.error is None and len(rows) == len(CENTRES)
    nuclei = tifffile.imread(out / "a_labels.tif")
    for row in rows:
        inside = nuclei == int(row["label"])
        for name, channel in zip(("dapi", "actin", "ch_488_nm"), data.astype(np.float64)):
            assert float(row[f"{name}_mean"]) == pytest.approx(channel[inside].mean(), abs=1e-6)
            assert float(row[f"{name}_median"]) == pytest.approx(np.median(channel[inside]),
                                                                 abs=1e-6)
            assert float(row[f"{name}_integrated"]) == pytest.approx(channel[inside].sum(),
                                                                     abs=1e-6)


def test_channel_intensities_per_compartment_with_cells(tmp_path):
    data = cell_image(tmp_path / "a.ome.tif")
    result, out, rows = predict(tmp_path, tmp_path / "a.ome.tif", cells=CellsSpec(distance=3.0),
                                measure_channels=(1,))
    assert result.error is None
    nuclei = tifffile.imread(out / "a_labels.tif")
    cells = tifffile.imread(out / "a_cells.tif")
    actin = data[1].astype(np.float64)
    for row in rows:
        label = int(row["label"])
        for compartment, where in (("nucleus", nuclei == label), ("cell", cells == label),
                                   ("cytoplasm", (cells == label) & (nuclei != label))):
            assert float(row[f"{compartment}_actin_mean"]) == pytest.approx(
                actin[where].mean(), abs=1e-6)
            assert float(row[f"{compartment}_actin_median"]) == pytest.approx(
                np.median(actin[where]), abs=1e-6)
            assert float(row[f"{compartment}_actin_integrated"]) == pytest.approx(
                actin[where].sum(), abs=1e-6)
        assert "cell_dapi_mean" not in row


def test_a_missing_measured_channel_is_named(tmp_path):
    cell_image(tmp_path / "a.ome.tif")
    result, _, _ = predict(tmp_path, tmp_path / "a.ome.tif", measure_channels=("GFP",))
    assert "--measure-channels 'GFP'" in result.error and "1 (Actin)" in result.error


def test_cells_are_refused_for_images_processed_block_by_block(tmp_path):
    image = tmp_path / "big.tif"
    tifffile.imwrite(image, np.zeros((256, 256), np.uint8), tile=(128, 128))
    results = predict_files(threshold_engine(), {"config": CONFIG}, [image], tmp_path / "out",
                            options=OPTIONS, instance_options=POST, progress=lambda _: None,
                            read_options=ReadOptions(cells=CellsSpec(distance=3)),
                            blockwise_pixels=0)
    assert "block by block, without --cells or --measure-channels" in results[0].error


def test_command_line_options_reach_the_read_options():
    from nucleiseg.cli import build_parser, read_options

    args = build_parser().parse_args(["predict", "in", "--out", "out", "--cells",
                                      "channel:Actin:15", "--measure-channels", "DAPI,2"])
    reading = read_options(args)
    assert reading.cells == CellsSpec(channel="Actin", max_distance=15.0)
    assert reading.measure_channels == ("DAPI", 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "in", "--out", "o", "--cells", "wide"])


def ellipsoids(shape=(24, 128, 128), count=12, seed=0):
    """A Z x Y x X uint16 stack of separate bright ellipsoids on a flat background (every
    plane is normalised on its own: noise alone would be nuclei to the stub engine), and their
    labels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    placed = 0
    while placed < count:
        centre = (rng.uniform(6, shape[0] - 6), *rng.uniform(14, shape[1] - 14, 2))
        radii = (rng.uniform(3, 5), *rng.uniform(6, 9, 2))
        inside = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii)) <= 1
        grown = sum(((a - c) / (r + 3)) ** 2 for a, c, r in zip((z, y, x), centre, radii)) <= 1
        if labels[grown].any():
            continue
        placed += 1
        labels[inside] = placed
    return np.where(labels > 0, 3000, 100).astype(np.uint16), labels


def test_planes_stitch_gives_one_3d_label_per_ellipsoid(tmp_path):
    image, truth = ellipsoids()
    tifffile.imwrite(tmp_path / "z.ome.tif", image, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "PhysicalSizeZ": 2.0})
    out = tmp_path / "out"
    results = predict_files(threshold_engine(), {"config": CONFIG}, [tmp_path / "z.ome.tif"],
                            out, options=OPTIONS, instance_options=POST,
                            progress=lambda _: None, read_options=ReadOptions(planes="stitch"))
    assert results[0].error is None
    found = tifffile.imread(out / "z_labels.tif")
    assert found.shape == truth.shape
    matched = 0
    for label in range(1, truth.max() + 1):
        inside = truth == label
        ids, counts = np.unique(found[inside], return_counts=True)
        best = ids[np.argmax(np.where(ids > 0, counts, 0))]
        if best:
            other = found == best
            matched += (inside & other).sum() / (inside | other).sum() >= 0.5
    assert matched >= 0.95 * truth.max()
    assert results[0].nuclei == found.max()  # (the thin caps of a few may stand alone)
    with open(out / "measurements.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == found.max()
    for row in rows:
        voxels = int((found == int(row["label"])).sum())
        assert int(row["voxels"]) == voxels
        assert float(row["volume_um3"]) == pytest.approx(voxels * 0.5 * 0.5 * 2.0)
        assert int(row["z_extent"]) == int(row["z_max"]) - int(row["z_min"]) + 1
        assert row["area"] == ""


def test_planes_stitch_refuses_what_it_does_not_take_yet(tmp_path):
    from nucleiseg.errors import UsageError

    image, _ = ellipsoids(count=2)
    tifffile.imwrite(tmp_path / "z.tif", image)
    with pytest.raises(UsageError, match="--planes stitch does not take --cells"):
        predict_files(threshold_engine(), {"config": CONFIG}, [tmp_path / "z.tif"],
                      tmp_path / "out", options=OPTIONS, instance_options=POST,
                      progress=lambda _: None,
                      read_options=ReadOptions(planes="stitch", cells=CellsSpec(distance=2)))

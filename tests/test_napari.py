"""The napari plugin: manifest, reader, sample data, the segmentation behind the widget (on a
napari ViewerModel: no display), and the Qt widget itself offscreen. Skipped without napari
(`pip install 'nucleiseg[napari]'`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari plugin's tests need nucleiseg[napari]")

from conftest import wait_for  # noqa: E402
from napari.components import ViewerModel  # noqa: E402

from nucleiseg.integrations.napari import _reader, _results, _sample_data, _segment  # noqa: E402

PLUGIN = Path(_reader.__file__).parent


@pytest.fixture(scope="module")
def engine(bundled_engine):
    return bundled_engine


def viewer_with(layers) -> ViewerModel:
    viewer = ViewerModel()
    for data, kwargs, kind in layers:
        viewer._add_layer_from_data(data, kwargs, kind)
    return viewer


def sample_image(key="fluorescence") -> np.ndarray:
    return _sample_data.sample_layers(key)[0][0]


# ---------------------------------------------------------------- manifest


def test_manifest_validates_and_every_command_imports():
    from npe2 import PluginManifest
    from npe2.manifest.utils import import_python_name

    manifest = PluginManifest.from_file(PLUGIN / "napari.yaml")
    assert manifest.name == "nucleiseg"
    for command in manifest.contributions.commands:
        assert callable(import_python_name(command.python_name)), command.id
    assert {s.key for s in manifest.contributions.sample_data} == set(_sample_data.SAMPLES)
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment nuclei",
                                                                    "Correct and retrain"]


def test_installed_plugin_is_found_by_npe2():
    """The napari.manifest entry point of the installed package (what `npe2 validate
    nucleiseg` checks)."""
    from npe2 import PluginManifest

    try:
        manifest = PluginManifest.from_distribution("nucleiseg")
    except ValueError:
        pytest.skip("the installed nucleiseg predates the napari.manifest entry point; "
                    "reinstall it (pip install -e .)")
    assert manifest.name == "nucleiseg"
    manifest.validate_imports()


def test_the_core_imports_neither_napari_nor_qt():
    code = ("import sys, nucleiseg.cli, nucleiseg.inference.predict, nucleiseg.algorithms.blocks, "
            "nucleiseg.inference.engines; "
            "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'magicgui') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- reader


def test_reader_declines_what_nucleiseg_does_not_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert _reader.get_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.get_reader(str(tmp_path / "missing.png")) is None
    assert _reader.get_reader(str(tmp_path)) is None  # a plain folder: not an OME-Zarr


def test_reader_grey_png_and_rgb(tmp_path):
    import imageio.v3 as iio

    grey = sample_image("fluorescence")
    colour = sample_image("histology")
    iio.imwrite(tmp_path / "grey.png", grey)
    iio.imwrite(tmp_path / "colour.png", colour)
    reader = _reader.get_reader([str(tmp_path / "grey.png"), str(tmp_path / "colour.png")])
    (data, kwargs, kind), (rgb_data, rgb_kwargs, _) = reader([str(tmp_path / "grey.png"),
                                                               str(tmp_path / "colour.png")])
    assert kind == "image" and kwargs["name"] == "grey" and not kwargs["rgb"]
    np.testing.assert_array_equal(data, grey)
    assert rgb_kwargs["rgb"] and rgb_data.shape == colour.shape
    viewer = viewer_with(reader(str(tmp_path / "colour.png")))
    assert viewer.layers["colour"].rgb


def test_reader_ome_tiff_channels_become_named_layers_with_pixel_size(tmp_path):
    import tifffile

    grey = sample_image("fluorescence")
    stack = np.stack([grey, 255 - grey]).astype(np.uint16)  # (C, Y, X)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]},
                                            "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    layers = _reader.get_reader(str(path))(str(path))
    viewer = viewer_with(layers)
    assert [layer.name for layer in viewer.layers] == ["cells [DAPI]", "cells [GFP]"]
    dapi = viewer.layers["cells [DAPI]"]
    np.testing.assert_array_equal(dapi.data, stack[0])
    assert tuple(dapi.scale) == (0.5, 0.5)
    assert dapi.metadata["pixel_size_um"] == (0.5, 0.5)


def test_reader_labels_output_with_measurements_as_features(tmp_path, engine):
    """What `nucleiseg predict` writes opens as a Labels layer whose features are its rows of
    measurements.csv (hovering a nucleus shows them)."""
    import imageio.v3 as iio

    from nucleiseg.pipeline.run import predict_files

    model, record = engine
    (tmp_path / "in").mkdir()
    for key in ("fluorescence", "brightfield"):  # two images: rows must be told apart
        iio.imwrite(tmp_path / "in" / f"{key}.png", sample_image(key))
    results = predict_files(model, record, [tmp_path / "in"], tmp_path / "out",
                            progress=lambda *_: None)
    found = {r.image.stem: r.nuclei for r in results}
    path = tmp_path / "out" / "fluorescence_labels.tif"
    (data, kwargs, kind), = _reader.get_reader(str(path))(str(path))
    assert kind == "labels" and kwargs["name"] == "fluorescence_labels"
    assert int(data.max()) == found["fluorescence"]
    features = kwargs["features"]
    assert len(features["index"]) == found["fluorescence"]
    np.testing.assert_array_equal(np.sort(features["index"]), np.unique(data)[1:])
    viewer = viewer_with([(data, kwargs, kind)])
    layer = viewer.layers["fluorescence_labels"]
    assert layer.features.shape[0] == found["fluorescence"]
    some = int(features["index"][0])
    row = layer.features[layer.features["index"] == some].iloc[0]
    assert row["area"] == np.count_nonzero(data == some)


def test_reader_huge_tiff_is_a_lazy_multiscale_layer(tmp_path, monkeypatch):
    import tifffile

    image = np.tile(sample_image("fluorescence"), (2, 2))
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(128, 128), subifds=1)
        tif.write(image[::2, ::2], tile=(128, 128), subfiletype=1)
    assert _reader.get_reader(str(path)) is _reader.read_layers
    (levels, kwargs, kind), = _reader.read_layers(str(path), blockwise_pixels=256 * 256)
    assert kind == "image" and kwargs["multiscale"] and not kwargs["rgb"]
    assert [level.shape for level in levels] == [(512, 512), (256, 256)]
    np.testing.assert_array_equal(np.asarray(levels[0][100:300, 200:260]),
                                  image[100:300, 200:260])
    viewer = viewer_with([(levels, kwargs, kind)])
    assert viewer.layers["slide"].multiscale


# ---------------------------------------------------------------- sample data


@pytest.mark.parametrize("key", sorted(_sample_data.SAMPLES))
def test_sample_data_gives_the_image_and_its_true_nuclei(key):
    layers = _sample_data.sample_layers(key)
    (image, image_kwargs, image_kind), (truth, truth_kwargs, truth_kind) = layers
    assert (image_kind, truth_kind) == ("image", "labels")
    assert image.shape[:2] == truth.shape == (256, 256)
    assert image_kwargs["rgb"] == (key == "histology")
    assert truth.max() > 0 and not truth_kwargs["visible"]
    viewer = viewer_with(getattr(_sample_data, key)())
    assert len(viewer.layers) == 2


# ---------------------------------------------------------------- segmentation (no Qt)


def check_features(result):
    """One feature row per nucleus, indexed by its label, measured on the labels."""
    labels = result.labels
    present = np.unique(labels)[1:]
    np.testing.assert_array_equal(np.sort(result.features["index"]), present)
    areas = np.bincount(labels.ravel())[result.features["index"]]
    np.testing.assert_array_equal(result.features["area"], areas)


def test_widget_computation_adds_labels_with_features_and_centroids(engine):
    model, record = engine
    viewer = viewer_with(_sample_data.fluorescence())
    image = viewer.layers["fluorescence_df53d0b6"]
    reports = []
    progress = _segment.Progress(report=lambda *report: reports.append(report))
    result = _segment.segment_layer_data(engine=model, record=record, progress=progress,
                                         **_results.layer_inputs(image))
    assert result.labels.shape == image.data.shape and result.count > 20
    check_features(result)
    # one tile per pass: a first pass, and one more if the estimated diameter asked for a rescale
    passes = 1 if float(result.checks[0]["scale"]) == 1 else 2
    assert reports[0][:2] == (0, 1) and reports[-1][0] == passes
    labels_layer, points = _results.add_result_layers(viewer, image, result)
    assert labels_layer.name == "fluorescence_df53d0b6 nuclei"
    assert labels_layer.features.shape[0] == result.count
    assert len(points.data) == result.count
    assert "nuclei" in result.summary()
    first = {key: values[0] for key, values in result.features.items()}
    inside = np.argwhere(result.labels == first["index"])[0]
    status = labels_layer.get_status(tuple(inside.astype(float)), world=True)
    assert f"{first['index']}; area: {first['area']:.0f}" in status["coordinates"]  # hover
    # a second run replaces the result instead of adding layers
    _results.add_result_layers(viewer, image, result)
    assert len(viewer.layers) == 4
    # cells grown from the nuclei: a second Labels layer under them, same ids
    cells = _results.grow_cells(result.labels, 4)
    _results.add_result_layers(viewer, image, result, cells=cells)
    names = [layer.name for layer in viewer.layers]
    assert names.index("fluorescence_df53d0b6 cells") < names.index("fluorescence_df53d0b6 nuclei")
    nuclei = result.labels > 0
    np.testing.assert_array_equal(cells[nuclei], result.labels[nuclei])  # each cell has its nucleus
    assert (cells > 0).sum() > nuclei.sum()
    assert set(np.unique(cells)) == set(np.unique(result.labels))
    _results.add_result_layers(viewer, image, result)  # cells off again: their layer goes
    assert len(viewer.layers) == 4


def test_the_widget_finds_what_predict_finds(engine):
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.inference.predict import options_for, segment_checked

    model, record = engine
    image = sample_image("histology")
    result = _segment.segment_layer_data(image, model, record, rgb=True)
    labels, _, _ = segment_checked(model, image, record["config"], options_for(record),
                                   instance_options_from(record))
    np.testing.assert_array_equal(result.labels, labels)


def test_channels_and_stacks(engine):
    model, record = engine
    colour = sample_image("histology")
    red = _segment.segment_layer_data(colour, model, record, rgb=True, channel=0)
    assert red.labels.shape == colour.shape[:2]
    grey = [sample_image("fluorescence"), sample_image("brightfield")]
    singles = [_segment.segment_layer_data(g, model, record) for g in grey]
    stack = _segment.segment_layer_data(np.stack(grey), model, record)
    assert stack.labels.shape == (2, 256, 256)
    assert stack.count == sum(s.count for s in singles)
    check_features(stack)  # numbered once across the planes
    np.testing.assert_array_equal(np.bincount(stack.features["plane"]),
                                  [s.count for s in singles])
    picked = _segment.segment_layer_data(np.stack(grey), model, record, channel=1)
    np.testing.assert_array_equal(picked.labels, singles[1].labels)
    viewer = viewer_with([(np.stack(grey), {"name": "stack"}, "image")])
    _, points = _results.add_result_layers(viewer, viewer.layers["stack"], stack)
    assert points.data.shape == (stack.count, 3)
    with pytest.raises(ValueError, match="does not exist"):
        _segment.segment_layer_data(colour, model, record, rgb=True, channel=3)


def test_estimated_diameter_rescales_small_nuclei(engine):
    """A model that records its nucleus size ("auto" diameter): nuclei half as large are
    segmented upscaled, and the check is reported."""
    from skimage.transform import rescale

    model, record = engine
    sized = {**record, "nucleus_size": {"median_diameter": 13.0}}
    small = (rescale(sample_image("fluorescence"), 0.5, preserve_range=True)
             .astype(np.uint8))
    result = _segment.segment_layer_data(small, model, sized)
    (check,) = result.checks
    assert check["scale"] > 1.5 and check["diameter"] > 0
    assert f"scale {check['scale']:.2f}" in result.summary()
    check_features(result)


def test_pixel_size_adds_micrometre_columns(engine):
    model, record = engine
    result = _segment.segment_layer_data(sample_image(), model, record, pixel_size=(0.5, 0.5))
    np.testing.assert_allclose(result.features["area_um2"], result.features["area"] * 0.25)


def test_huge_planes_go_block_by_block(engine, monkeypatch):
    """Above `blockwise_pixels` a plane is segmented as predict segments huge files:
    block by block (here 256² cores), with nuclei crossing the seams kept whole."""
    model, record = engine
    image = np.block([[sample_image("fluorescence"), sample_image("brightfield")],
                      [sample_image("brightfield"), sample_image("fluorescence")]])
    whole = _segment.segment_layer_data(image, model, record)
    reports = []
    progress = _segment.Progress(report=lambda *report: reports.append(report))
    blocks = _segment.segment_layer_data(image, model, record, progress=progress,
                                         block_core=256, blockwise_pixels=256 * 256)
    assert blocks.blockwise and not whole.blockwise
    assert (4, 4) in [report[:2] for report in reports]  # 4 blocks of 4
    check_features(blocks)
    assert abs(blocks.count - whole.count) <= 0.05 * whole.count
    agree = np.count_nonzero((blocks.labels > 0) == (whole.labels > 0)) / image.size
    assert agree > 0.99


def test_a_huge_multiscale_layer_from_the_reader(tmp_path, engine, monkeypatch):
    import tifffile

    model, record = engine
    image = np.tile(sample_image("fluorescence"), (2, 2))
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(128, 128), subifds=1)
        tif.write(image[::2, ::2], tile=(128, 128), subfiletype=1)
    viewer = viewer_with(_reader.read_layers(str(path), blockwise_pixels=256 * 256))
    result = _segment.segment_layer_data(engine=model, record=record, block_core=256,
                                         blockwise_pixels=256 * 256,
                                         **_results.layer_inputs(viewer.layers["slide"]))
    assert result.blockwise and result.labels.shape == (512, 512) and result.count > 100
    check_features(result)
    _results.add_result_layers(viewer, viewer.layers["slide"], result)
    assert viewer.layers["slide nuclei"].data.shape == (512, 512)


def test_cancel_stops_at_the_next_model_call(engine):
    model, record = engine
    calls = []
    progress = _segment.Progress(report=lambda *report: calls.append(report),
                                 cancelled=lambda: len(calls) >= 1)
    with pytest.raises(_segment.Cancelled):
        _segment.segment_layer_data(sample_image(), model, record, progress=progress)


# ---------------------------------------------------------------- the Qt widget, offscreen


def test_qt_widget_segments_in_a_worker_and_can_be_cancelled(qt_app):
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.integrations.napari._widget import SegmentNuclei

    viewer = viewer_with(_sample_data.fluorescence())
    widget = SegmentNuclei(viewer)
    assert [name for name, _ in widget._image_layers()] == ["fluorescence_df53d0b6"]
    assert widget._foreground.value == pytest.approx(0.6)  # the bundled model's tuned value
    widget._image.value = viewer.layers["fluorescence_df53d0b6"]
    widget.run()
    assert widget.running and widget._cancel.enabled
    wait_for(qt_app, widget, 120)
    labels = viewer.layers["fluorescence_df53d0b6 nuclei"]
    count = labels.features.shape[0]
    assert count > 20 and widget._status.value.startswith(f"{count} nuclei")
    assert widget._run.enabled and not widget._cancel.enabled
    # fields left at the model's values keep its post-processing per image kind
    assert widget.settings()[1].by_kind == instance_options_from(widget._record).by_kind != {}
    widget._min_confidence.value = 0.3  # a changed field wins for every kind
    assert widget.settings()[1].for_kind("histology").min_confidence == pytest.approx(0.3)
    widget._min_confidence.value = instance_options_from(widget._record).min_confidence
    assert widget.settings()[0].stain_reference is not None  # the bundled model's H&E stain
    widget._stain.value = False
    assert widget.settings()[0].stain_reference is None
    widget._stain.value = True

    widget._foreground.value = 0.9  # stricter: fewer or smaller nuclei, same layer
    widget.run()
    widget.cancel()  # before the first tile: nothing changes
    wait_for(qt_app, widget, 120)
    assert widget._status.value == "cancelled"
    assert labels.features.shape[0] == count and len(viewer.layers) == 4
    assert widget._diameter.enabled  # the bundled model records its training nucleus size
    widget._model.value = "file"  # no file chosen: said, nothing started
    widget.run()
    assert not widget.running and "choose a model file" in widget._status.value
    widget.close()


def test_diameter_field():
    from nucleiseg.integrations.napari._widget import parse_diameter

    assert parse_diameter(" Auto ") == "auto"
    assert parse_diameter("") is None
    assert parse_diameter("12.5") == 12.5
    for bad in ("big", "0", "-3"):
        with pytest.raises(ValueError, match="diameter"):
            parse_diameter(bad)


def test_napari_finds_the_plugin_reader_and_samples(tmp_path):
    """Through napari itself (npe2's plugin manager): File > Open with the nucleiseg reader,
    File > Open Sample > nucleiseg."""
    import imageio.v3 as iio
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    if "nucleiseg" not in manager._manifests:
        pytest.skip("nucleiseg is not installed with its napari.manifest entry point")
    iio.imwrite(tmp_path / "cells.png", sample_image("fluorescence"))
    viewer = ViewerModel()
    viewer.open(str(tmp_path / "cells.png"), plugin="nucleiseg")
    viewer.open_sample("nucleiseg", "histology")
    assert [layer.name for layer in viewer.layers] == [
        "cells", "histology_c0152b1a", "histology_c0152b1a true nuclei"]
    assert viewer.layers["histology_c0152b1a"].rgb

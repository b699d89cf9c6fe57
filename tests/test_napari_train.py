"""The napari "Correct and retrain" widget: pairs from layers written as they are, a fine-tune
of a tiny model through the widget's computation, the new model in the Segment widget's menu,
Cancel and Resume. Data made in code; skipped without napari."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari plugin's tests need nucleiseg[napari]")

from conftest import (  # noqa: E402
    TINY_MODEL,
    disk_samples,
    make_disks,
    wait_for,
    write_paired,
)
from napari.components import ViewerModel  # noqa: E402

from nucleiseg.integrations.napari import _train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny model trained for one epoch: what the fine-tunes start from."""
    from nucleiseg.config import TrainConfig
    from nucleiseg.training.fit import train

    root = tmp_path_factory.mktemp("tiny")
    data = write_paired(root / "data", disk_samples(4))
    config = TrainConfig(image_size=64, epochs=1, batch_size=4, steps_per_epoch=2,
                         **TINY_MODEL)
    run_dir, _ = train(config, data, root / "run", verbose=0, log=lambda *_: None)
    return run_dir / "model.keras"


def two_channel(seed=1):
    """A 16-bit image of 2 channels (first axis), nuclei in channel 0, and its labels."""
    grey, labels = make_disks(seed=seed)
    other = np.full_like(grey, 30)
    return (np.stack([grey, other]).astype(np.uint16) * 200), labels


@pytest.fixture
def training_set(tmp_path):
    """A folder holding an 8-bit grey pair and a 16-bit 2-channel pair, added from layers."""
    viewer = ViewerModel()
    grey, grey_labels = make_disks(seed=0)
    stack, stack_labels = two_channel()
    viewer.add_image(grey, name="cells grey")
    viewer.add_labels(grey_labels.astype(np.int32), name="cells grey nuclei")
    viewer.add_image(stack, name="cells/2ch")
    viewer.add_labels(stack_labels, name="cells/2ch nuclei")
    folder = tmp_path / "corrected"
    assert _train.add_pair(folder, "cells grey", grey, False, grey_labels)[0] == "cells_grey"
    assert _train.add_pair(folder, "cells/2ch", stack, False, stack_labels,
                           channel=0)[0] == "cells_2ch"
    return folder, grey, grey_labels, stack, stack_labels


# ---------------------------------------------------------------- the training set


def test_pairs_are_written_as_they_are_in_the_train_layout(training_set):
    import tifffile

    from nucleiseg.io.images import find_samples, read_image, read_label_mask, read_pixels

    folder, grey, grey_labels, stack, stack_labels = training_set
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["cells_2ch.tif",
                                                                    "cells_grey.png"]
    assert sorted(p.name for p in (folder / "masks").iterdir()) == ["cells_2ch.tif",
                                                                   "cells_grey.tif"]
    samples, skipped = find_samples(folder)
    assert [s.name for s in samples] == ["cells_2ch", "cells_grey"] and not skipped
    assert _train.count_pairs(folder) == 2
    png, _ = read_pixels(folder / "images" / "cells_grey.png")
    np.testing.assert_array_equal(png, grey)  # 8-bit grey: PNG, unchanged
    on_disk = tifffile.imread(folder / "images" / "cells_2ch.tif")
    assert on_disk.dtype == np.uint16 and on_disk.shape == (2, 64, 64)
    np.testing.assert_array_equal(on_disk, stack)  # 16-bit, 2 channels: unchanged
    _, info = read_pixels(folder / "images" / "cells_2ch.tif")
    assert info.axes == "CYX"
    np.testing.assert_array_equal(read_image(folder / "images" / "cells_2ch.tif", 0)[..., 0],
                                  stack[0])  # what training reads with the folder's channel
    mask = tifffile.imread(folder / "masks" / "cells_grey.tif")
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(read_label_mask(folder / "masks" / "cells_2ch.tif") > 0,
                                  stack_labels > 0)
    record = json.loads((folder / _train.TRAINING_FILE).read_text())
    assert record["channel"] == 0 and record["pairs"]["cells_2ch"]["dtype"] == "uint16"


def test_names_are_unique_and_re_adding_a_layer_replaces_its_pair(training_set):
    folder, grey, grey_labels, *_ = training_set
    name, _ = _train.add_pair(folder, "cells grey", grey, False, grey_labels)
    assert name == "cells_grey-2"  # another layer of the same name: a suffix
    fixed = grey_labels.copy()
    fixed[:8] = 0
    again, notes = _train.add_pair(folder, "cells grey", grey, False, fixed, replace=name)
    assert again == name and "replaced" in notes[0]
    assert _train.count_pairs(folder) == 3
    big = np.zeros((64, 64), np.int64)
    big[0, :2] = [1, 70000]
    _train.add_pair(folder, "many", grey, False, big)
    import tifffile

    assert tifffile.imread(folder / "masks" / "many.tif").dtype == np.uint32


def test_refusals_say_why(training_set):
    folder, grey, grey_labels, stack, stack_labels = training_set
    with pytest.raises(ValueError, match="do not match"):
        _train.add_pair(folder, "x", grey[:32], False, grey_labels)
    with pytest.raises(ValueError, match="nuclear channel"):
        _train.add_pair(folder, "x", stack, False, stack_labels)  # channel or stack?
    with pytest.raises(ValueError, match="channel 0, not 1"):
        _train.add_pair(folder, "x", stack, False, stack_labels, channel=1)
    with pytest.raises(ValueError, match="negative"):
        _train.add_pair(folder, "x", grey, False, -grey_labels)
    assert _train.count_pairs(folder) == 2
    assert _train.safe_name("../a b:c") == "a_b_c" and _train.safe_name("///") == "image"


def test_fine_tune_config_takes_the_recipe_of_the_starting_model():
    from nucleiseg.model.saving import bundled_model_path, read_record

    config = _train.fine_tune_config(read_record(bundled_model_path()), minutes=10,
                                     learning_rate=1e-4)
    assert (config.image_size, config.sampling, config.target) == (256, "crops", "boundary")
    assert config.decoder_filters == (256, 128, 64, 32)
    assert (config.learning_rate, config.batch_size, config.minutes) == (1e-4, 4, 10)
    assert config.lr_schedule == "constant"
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        _train.start_model(bundled_model_path().with_name("nothing.onnx"))


# ---------------------------------------------------------------- fine-tune, cancel, resume


def test_fine_tune_makes_a_run_whose_model_segments(training_set, tiny_model):
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.integrations.napari._segment import segment_layer_data
    from nucleiseg.model.saving import read_record

    folder, grey, *_ = training_set
    reports = []
    result = _train.fine_tune(folder, tiny_model, minutes=0.01, learning_rate=1e-4,
                              report=lambda *r: reports.append(r), steps_per_epoch=2)
    model = result["model"]
    assert model == result["run_dir"] / "model.keras" and model.is_file()
    assert result["run_dir"].parent == folder / "runs"
    assert "time budget" in result["message"]
    record = read_record(model)
    assert record["init_model"]["path"] == str(tiny_model)
    assert record["config"]["decoder_filters"] == list(TINY_MODEL["decoder_filters"])
    assert record["config"]["learning_rate"] == 1e-4 and record["config"]["minutes"] == 0.01
    assert any(text.startswith("epoch 1, step 2/2, loss") for _, text in reports)
    assert "left" in reports[-1][1]
    engine, engine_record = load_engine(model)
    labels = segment_layer_data(grey, engine, engine_record).labels
    assert labels.shape == grey.shape
    assert _train.resumable_runs(folder) == []


def test_cancel_keeps_a_resumable_run_and_resume_finishes_it(training_set, tiny_model):
    folder, *_ = training_set
    reports = []

    def after_first_epoch():  # Cancel pressed once epoch 1 has ended
        return any(text.startswith("epoch 1, loss") for _, text in reports)

    result = _train.fine_tune(folder, tiny_model, minutes=600, learning_rate=1e-4,
                              report=lambda *r: reports.append(r),
                              cancelled=after_first_epoch, steps_per_epoch=2)
    run_dir = result["run_dir"]
    assert result["model"] is None and "cancelled" in result["message"]
    assert "after epoch 1" in result["message"]
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["epochs_done"] == 1
    assert not (run_dir / "model.keras").exists()
    assert _train.resumable_runs(folder) == [run_dir]

    stopped = {"now": False}

    def stop_after_epoch_2(fraction, text):
        stopped["now"] = stopped["now"] or text.startswith("epoch 2, loss")

    resumed = _train.resume_run(run_dir, report=stop_after_epoch_2,
                                cancelled=lambda: stopped["now"])
    assert "after epoch 2" in resumed["message"]
    # a last session with a budget that is already spent ends after one epoch and saves
    config = json.loads((run_dir / "config.json").read_text())
    config["minutes"] = 0.001
    (run_dir / "config.json").write_text(json.dumps(config))
    done = _train.resume_run(run_dir)
    assert done["model"].is_file() and _train.resumable_runs(folder) == []


def test_cancel_before_the_first_epoch_says_so(training_set, tiny_model):
    folder, *_ = training_set
    result = _train.fine_tune(folder, tiny_model, minutes=5, steps_per_epoch=2,
                              cancelled=iter([False, True]).__next__)
    assert result["model"] is None
    assert "before the first epoch ended" in result["message"]
    assert _train.resumable_runs(folder) == []


def test_fine_tune_needs_two_pairs(tmp_path, tiny_model):
    grey, labels = make_disks()
    _train.add_pair(tmp_path, "one", grey, False, labels)
    with pytest.raises(ValueError, match="1 pair in the training set"):
        _train.fine_tune(tmp_path, tiny_model)
    dark, dark_labels = make_disks(seed=3, bright_background=True)  # another kind
    _train.add_pair(tmp_path, "two", dark, False, dark_labels)
    with pytest.raises(ValueError, match="validation needs 2 images of one kind"):
        _train.fine_tune(tmp_path, tiny_model)


# ---------------------------------------------------------------- the Qt widgets, offscreen


def test_widgets_add_fine_tune_and_segment_with_the_new_model(qt_app, tmp_path, tiny_model,
                                                               monkeypatch):
    from nucleiseg.integrations.napari._widget import SegmentNuclei

    monkeypatch.setattr(_train, "FINE_TUNE_STEPS", 2)
    viewer = ViewerModel()
    segment = SegmentNuclei(viewer)
    segment._model.value = "file"
    segment._model_file.value = tiny_model
    widget = _train.CorrectAndRetrain(viewer)
    widget._folder.value = tmp_path / "set"
    assert widget._pairs.value.startswith("0 in")
    assert (widget._minutes.value, widget._learning_rate.value,
            widget._batch_size.value) == (10.0, pytest.approx(5e-5), 4)
    for seed in (0, 1):
        grey, labels = make_disks(seed=seed)
        image = viewer.add_image(grey, name=f"cells {seed}")
        viewer.add_labels(labels, name=f"cells {seed} nuclei")
        widget._image.value = image  # picks 'cells N nuclei' as the labels
        assert widget._corrected.value.name == f"cells {seed} nuclei"
        assert widget.add_to_training_set() == f"cells_{seed}"
    assert widget.add_to_training_set() == "cells_1"  # the same layer again: replaced
    assert widget._pairs.value.startswith("2 in") and "replaced" in widget._status.value

    widget._minutes.min, widget._minutes.step = 0.001, 0.001  # step: 3 decimals
    widget._minutes.value = 0.001
    widget.start_fine_tune()
    assert widget.running and widget._cancel.enabled and not widget._fine_tune.enabled
    wait_for(qt_app, widget, 300)
    assert widget._status.value.startswith("saved "), widget._status.value
    model = segment.model_path()
    assert model.name == "model.keras" and model.parent.parent == tmp_path / "set" / "runs"
    assert segment._model.value == str(model) and not segment._model_file.visible
    assert any(name.startswith("fine-tuned ") for name, _ in
               segment._model._widget._mgui_get_choices())

    # the next Segment uses the new model: its computation, here in the main thread (loading a
    # .keras model in the widget's worker thread crashed under the offscreen test platform)
    from nucleiseg.integrations.napari._results import layer_inputs
    from nucleiseg.integrations.napari._segment import Progress

    options, instance_options = segment.settings()
    job = {**layer_inputs(viewer.layers["cells 0"]), "channel": None, "options": options,
           "instance_options": instance_options}
    result, cells = segment._compute(segment.model_path(), job, Progress())
    assert result.labels.shape == (64, 64) and str(model) in segment._engines and cells is None
    # the next fine-tune starts from the fine-tuned model
    assert _train.start_model(widget.model_in_use()) == model
    widget.close()
    segment.close()

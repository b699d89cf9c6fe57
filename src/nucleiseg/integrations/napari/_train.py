"""The "Correct and retrain" dock widget: add corrected segmentations to a training set on
disk, fine-tune the model in use on it, and segment with the result.

The loop: segment an image with "Segment nuclei", correct the '<image> nuclei' Labels layer
with napari's own tools (paint, fill, erase), then here:

* **Add to training set** writes the pair (the Image layer as it is, the corrected labels as a
  16-bit label TIFF, 32-bit past 65535 nuclei) into FOLDER/images and FOLDER/masks, the layout
  `nucleiseg train --data FOLDER` reads, each file atomically. The name is the image layer's,
  sanitised; a name already in the folder gets a suffix (-2, -3, ...), except when the same
  Labels layer is added again: its earlier pair is then replaced (the layer remembers the name
  it was saved under), so correcting further and adding again never duplicates an image.
  8-bit grey or RGB(A) images become PNG; anything else (16-bit, float, several channels)
  a TIFF of the same type and shape (channels first, axes recorded).
* **Fine-tune** trains from the model in use (the Segment widget's, else the bundled one) on
  the folder's pairs, in a worker thread, with a time budget (`nucleiseg.training.fit.train`,
  `TrainConfig.minutes`); the run goes to FOLDER/runs/<time>, and its model is added to the
  Segment widget's model menu and selected.
* **Cancel** stops at the next batch; the run keeps the checkpoint of its last finished
  epoch, and **Resume** continues it (`nucleiseg.training.fit.resume`).

What runs without Qt (writing pairs, the fine-tune configuration and run, the progress
callback) is in plain functions here, so tests drive them without an event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from nucleiseg.config import FINE_TUNE_LEARNING_RATE

TRAINING_FILE = "nucleiseg-training.json"  # the folder's nuclear channel, the pairs' origins
SAVED_AS = "nucleiseg_training"  # Labels layer metadata: {folder: name} it was saved under
DEFAULT_FOLDER = Path.home() / "nucleiseg-training"
FINE_TUNE_STEPS = 20  # steps per epoch: a checkpoint every 20 batches, whatever the data size
FINE_TUNE_EPOCHS = 1000  # the time budget ends the run long before


class Cancelled(Exception):
    """The user pressed Cancel."""


# ---------------------------------------------------------------- the training set on disk


def safe_name(name: str) -> str:
    """A layer name as a file name: letters, digits, '.', '_' and '-' only; never empty."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    return name[:80] or "image"


def read_training_file(folder: Path) -> dict:
    path = Path(folder) / TRAINING_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_training_file(folder: Path, data: dict) -> None:
    from nucleiseg.io.runfiles import write_json

    write_json(Path(folder) / TRAINING_FILE, data)


def count_pairs(folder: Path) -> int:
    """How many image + mask pairs `nucleiseg train --data folder` would find."""
    from nucleiseg.errors import NucleisegError
    from nucleiseg.io.images import find_samples

    folder = Path(folder)
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        return 0
    try:
        samples, _ = find_samples(folder, skip_bad=True)
    except NucleisegError:
        return 0
    return len(samples)


def stems_in(folder: Path) -> set[str]:
    return {path.stem for sub in ("images", "masks") if (Path(folder) / sub).is_dir()
            for path in (Path(folder) / sub).iterdir()}


def unique_name(folder: Path, name: str) -> str:
    taken = stems_in(folder)
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def image_of_layer(data, rgb: bool, channel: int | None, labels_shape) -> tuple[np.ndarray, str]:
    """The image to save as it is, and its axes ("YX", "YXS" or "CYX"), checked against the
    labels' shape. A layer of 3 dimensions that is not RGB is a multi-channel image (channels
    first) only with `channel` given; a stack of planes is refused."""
    array = np.asarray(data)
    if rgb:
        axes = "YXS"
    elif array.ndim == 2:
        axes = "YX"
    elif array.ndim == 3 and channel is not None:
        axes = "CYX"
        if not 0 <= channel < array.shape[0]:
            raise ValueError(f"channel {channel}: the image has {array.shape[0]} channels")
    elif array.ndim == 3:
        raise ValueError("a layer of 3 dimensions: choose its nuclear channel (the first axis "
                         "holds channels), or add one plane at a time")
    else:
        raise ValueError(f"a layer of {array.ndim} dimensions: training takes 2-D images "
                         "(with channels); save one plane at a time")
    plane = array.shape[:2] if axes.startswith("YX") else array.shape[1:]
    if tuple(labels_shape) != tuple(plane):
        raise ValueError(f"the labels ({labels_shape[0]}x{labels_shape[1]}) do not match the "
                         f"image ({plane[0]}x{plane[1]})")
    return array, axes


def labels_for_disk(labels) -> np.ndarray:
    """A Labels layer's data as a 16-bit label image (32-bit past 65535 nuclei)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"the labels are {labels.ndim}-D; training takes 2-D label images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels of type {labels.dtype}: expected integers")
    if labels.size and labels.min() < 0:
        raise ValueError("the labels hold negative values")
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


def write_image_as_is(path_stem: Path, image: np.ndarray, axes: str) -> Path:
    """8-bit grey or RGB(A): PNG; anything else: a TIFF of the same type and shape."""
    from nucleiseg.io.images import write_png
    from nucleiseg.io.runfiles import atomic_write

    if image.dtype == np.uint8 and (axes == "YX" or (axes == "YXS" and image.shape[-1] in
                                                     (3, 4))):
        path = path_stem.with_suffix(".png")
        write_png(path, image)
        return path
    import tifffile

    path = path_stem.with_suffix(".tif")
    kwargs = {"photometric": "rgb"} if axes == "YXS" and image.shape[-1] in (3, 4) else {
        "photometric": "minisblack"}
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, image, compression="zlib",
                                                    metadata={"axes": axes}, **kwargs))
    return path


def add_pair(folder: Path, name: str, image_data, rgb: bool, labels, channel: int | None = None,
             replace: str | None = None) -> tuple[str, list[str]]:
    """Write an image (as it is) and its label image into FOLDER/images and FOLDER/masks.

    Returns (the name written, notes for the user). `replace`: the name this pair was saved
    under before (the same Labels layer added again): that pair is overwritten; otherwise a
    name already in the folder gets a suffix. `channel`: the nuclear channel of a
    multi-channel image; one folder trains with one channel (kept in nucleiseg-training.json)."""
    from nucleiseg.io.images import write_tiff

    folder = Path(folder)
    mask = labels_for_disk(labels)
    image, axes = image_of_layer(image_data, rgb, channel, mask.shape)
    needs = channel if axes == "CYX" or (axes == "YXS" and channel is not None) else None
    record = read_training_file(folder)
    kept = record.get("channel")
    if needs is not None and kept is not None and needs != kept:
        raise ValueError(f"this training set's multi-channel images have their nuclei in "
                         f"channel {kept}, not {needs}: use another folder")
    if axes == "YXS" and needs is None and kept is not None:
        raise ValueError(f"this training set trains on channel {kept} of multi-channel images, "
                         f"which would take channel {kept} of this colour image too: use "
                         "another folder, or pick its nuclear channel")
    notes = []
    if replace and replace in stems_in(folder):
        name = replace
        for sub in ("images", "masks"):  # the earlier files, whatever their type
            for old in (folder / sub).glob(f"{name}.*"):
                old.unlink()
        notes.append(f"replaced the earlier {name}")
    else:
        name = unique_name(folder, safe_name(name))
    image_path = write_image_as_is(folder / "images" / name, image, axes)
    write_tiff(folder / "masks" / f"{name}.tif", mask)
    pairs = record.setdefault("pairs", {})
    pairs[name] = {"image": image_path.name, "axes": axes, "dtype": str(image.dtype),
                   "channel": needs, "nuclei": int(len(np.unique(mask)) - (mask.min() == 0)),
                   "added": dt.datetime.now().isoformat(timespec="seconds")}
    if needs is not None:
        record["channel"] = needs
    write_training_file(folder, record)
    if not mask.any():
        notes.append("no nuclei in these labels (kept: an image without nuclei teaches too)")
    return name, notes


def resumable_runs(folder: Path) -> list[Path]:
    """Runs under FOLDER/runs that stopped after an epoch (checkpoints/last.json) without a
    model.keras: newest first."""
    runs = Path(folder) / "runs"
    if not runs.is_dir():
        return []
    found = [run for run in runs.iterdir() if (run / "checkpoints" / "last.json").is_file()
             and (run / "config.json").is_file() and not (run / "model.keras").exists()]
    return sorted(found, key=lambda run: run.name, reverse=True)


# ---------------------------------------------------------------- fine-tuning


def start_model(path: Path | None) -> Path:
    """The .keras model a fine-tune starts from: `path`, or the bundled model. An ONNX or
    TFLite export cannot be trained: its .keras is needed."""
    from nucleiseg.model.saving import bundled_model_path

    path = bundled_model_path() if path is None else Path(path)
    if path.suffix.lower() != ".keras":
        keras_file = path.with_suffix(".keras")
        if keras_file.is_file():
            return keras_file
        raise ValueError(f"{path.name}: an export cannot be fine-tuned; choose its .keras "
                         "model in Segment nuclei")
    return path


def fine_tune_config(record: dict, minutes: float, learning_rate: float, batch_size: int = 4,
                     **overrides):
    """A TrainConfig for a fine-tune: the starting model's architecture, crop size and
    augmentations (config.inherit_recipe), a constant `learning_rate`, `batch_size`, and a
    time budget of `minutes` that ends the run (epochs of FINE_TUNE_STEPS batches)."""
    from nucleiseg.config import TrainConfig, inherit_recipe

    config = TrainConfig(epochs=FINE_TUNE_EPOCHS, steps_per_epoch=FINE_TUNE_STEPS,
                         batch_size=batch_size, learning_rate=learning_rate, minutes=minutes)
    config = inherit_recipe(config, record.get("config", {}), given=set())
    import dataclasses

    return dataclasses.replace(config, **overrides) if overrides else config


def progress_callback(report, cancelled, budget_seconds: float | None, seconds_before=0.0):
    """A Keras callback that calls `report(fraction, text)` after every batch and epoch
    (epoch, step, loss, time left of the budget) and raises KeyboardInterrupt at the next
    batch once `cancelled()`: nucleiseg.training.fit then stops as on Ctrl-C, keeping the last
    finished epoch's checkpoint for a resume."""
    import keras

    class TrainProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.started = time.perf_counter()
            self.epoch, self.steps, self.val_loss = 0, 0, None

        def elapsed(self) -> float:
            return seconds_before + time.perf_counter() - self.started

        def on_train_begin(self, logs=None):
            self.steps = self.params.get("steps") or 0
            self.check()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def check(self):
            if cancelled():
                raise KeyboardInterrupt

        def say(self, step, logs):
            loss = (logs or {}).get("loss")
            parts = [f"epoch {self.epoch}"]
            if step is not None and self.steps:
                parts.append(f"step {step}/{self.steps}")
            if loss is not None:
                parts.append(f"loss {float(loss):.4f}")
            if self.val_loss is not None:
                parts.append(f"val {self.val_loss:.4f}")
            spent = self.elapsed()
            if budget_seconds:
                left = max(0.0, budget_seconds - spent)
                parts.append(f"about {format_duration(left)} left")
                fraction = min(1.0, spent / budget_seconds)
            else:
                parts.append(f"{format_duration(spent)} spent")
                fraction = 0.0
            report(fraction, ", ".join(parts))

        def on_train_batch_end(self, batch, logs=None):
            self.say(batch + 1, logs)
            self.check()

        def on_test_batch_end(self, batch, logs=None):
            self.check()

        def on_epoch_end(self, epoch, logs=None):
            if (logs or {}).get("val_loss") is not None:
                self.val_loss = float(logs["val_loss"])
            self.say(None, logs)

    return TrainProgress()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


_fit_lock = threading.Lock()


def with_callback(run, callback):
    """Call `run()` (nucleiseg.training.fit.train or resume) with `callback` added to its model.fit.

    nucleiseg.training.fit takes no callbacks of its own, so the models its build_model makes for
    the run get a fit that adds this one (for the call only; one fine-tune at a time)."""
    import nucleiseg.training.fit as training

    with _fit_lock:
        original = training.build_model

        def build_model(*args, **kwargs):
            model = original(*args, **kwargs)
            fit = model.fit

            def fit_with_progress(*fit_args, callbacks=None, **fit_kwargs):
                return fit(*fit_args, callbacks=[*(callbacks or []), callback], **fit_kwargs)

            model.fit = fit_with_progress
            return model

        training.build_model = build_model
        try:
            return run()
        finally:
            training.build_model = original


def fine_tune(folder: Path, init_model: Path | None, minutes: float = 10.0,
              learning_rate: float = FINE_TUNE_LEARNING_RATE, batch_size: int = 4,
              run_dir: Path | None = None,
              report=None, cancelled=None, log=None, **overrides) -> dict:
    """Fine-tune the model at `init_model` (None: bundled) on the pairs in `folder`; the run
    goes to `run_dir` (default FOLDER/runs/<time>). Returns {"run_dir", "model" (the new
    model.keras, None when cancelled), "message"}."""
    from nucleiseg.errors import Interrupted
    from nucleiseg.model.saving import read_record
    from nucleiseg.training.fit import train

    report = report or (lambda fraction, text: None)
    cancelled = cancelled or (lambda: False)
    folder = Path(folder)
    pairs = count_pairs(folder)
    if pairs < 2:
        raise ValueError(f"{folder}: {pairs} pair{'s' if pairs != 1 else ''} in the training "
                         "set; add at least 2 (one is held out to pick the best epoch)")
    check_split(folder, read_training_file(folder).get("channel"))
    init_model = start_model(init_model)
    config = fine_tune_config(read_record(init_model), minutes, learning_rate, batch_size,
                              **overrides)
    run_dir = Path(run_dir) if run_dir else (
        folder / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if cancelled():
        raise Cancelled
    callback = progress_callback(report, cancelled, minutes * 60)
    channel = read_training_file(folder).get("channel")
    command = (f"napari Correct and retrain: fine-tune {init_model} on {folder}, "
               f"{minutes:g} min, learning rate {learning_rate:g}")
    try:
        run_dir, record = with_callback(lambda: train(
            config, folder, run_dir, verbose=0, log=log or (lambda *_: None),
            command=command, init_model=init_model, channel=channel), callback)
    except Interrupted as stopped:
        return {"run_dir": run_dir, "model": None, "message": f"cancelled: {stopped}"}
    return {"run_dir": run_dir, "model": run_dir / "model.keras",
            "message": run_summary(run_dir, record)}


def check_split(folder: Path, channel=None, val_fraction: float = 0.3, seed: int = 123):
    """Refuse a training set whose split (by image kind, as train makes it) holds no
    validation image: train needs one to pick the best epoch."""
    from nucleiseg.algorithms.preprocess import image_kind
    from nucleiseg.io.images import find_samples, read_image
    from nucleiseg.training.data import split_names

    samples, _ = find_samples(folder, skip_bad=True)
    kinds = {s.name: image_kind(read_image(s.image_path, channel)) for s in samples}
    _, val = split_names(sorted(kinds), val_fraction, seed, kinds)
    if not val:
        counts = list(kinds.values())
        found = ", ".join(f"{kind} ({counts.count(kind)})" for kind in sorted(set(counts)))
        raise ValueError(f"validation needs 2 images of one kind; the training set has {found}: "
                         "add another image of a kind you have")


def resume_run(run_dir: Path, report=None, cancelled=None, log=None) -> dict:
    """Continue a cancelled fine-tune (nucleiseg.training.fit.resume) with progress and Cancel."""
    from nucleiseg.config import TrainConfig
    from nucleiseg.errors import Interrupted
    from nucleiseg.training.fit import resume

    run_dir = Path(run_dir)
    report = report or (lambda fraction, text: None)
    cancelled = cancelled or (lambda: False)
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    state = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    callback = progress_callback(report, cancelled,
                                 config.minutes * 60 if config.minutes else None,
                                 seconds_before=state.get("seconds", 0.0))
    try:
        run_dir, record = with_callback(
            lambda: resume(run_dir, verbose=0, log=log or (lambda *_: None)), callback)
    except Interrupted as stopped:
        return {"run_dir": run_dir, "model": None, "message": f"cancelled: {stopped}"}
    return {"run_dir": run_dir, "model": run_dir / "model.keras",
            "message": run_summary(run_dir, record)}


def run_summary(run_dir: Path, record: dict) -> str:
    metrics = record.get("metrics", {})
    native = metrics.get("validation_native", {})
    parts = [f"saved {run_dir.name}/model.keras", f"{metrics.get('epochs_run', '?')} epochs "
             f"(best {metrics.get('best_epoch', '?')})"]
    for key in ("f1@0.5", "aji", "dice"):
        if isinstance(native.get(key), (int, float)):
            parts.append(f"validation {key} {native[key]:.3f}")
            break
    if metrics.get("stopped"):
        parts.append(metrics["stopped"])
    return "; ".join(parts)


def model_label(run_dir: Path) -> str:
    """The Segment widget's menu entry for a fine-tuned model."""
    return f"fine-tuned {Path(run_dir).name}"


# ---------------------------------------------------------------- the dock widget


class _Relay(QObject):
    """Carries progress (fraction of the time budget, text) from the worker thread."""

    progress = Signal(float, str)


class CorrectAndRetrain(Container):
    """Image and corrected Labels layer, training folder, Add to training set; time budget,
    learning rate, batch size, Fine-tune, Resume, Cancel, a progress bar."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.worker = None
        self._cancel_event = threading.Event()
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)

        self._image = ComboBox(label="image", choices=self._image_layers, nullable=True)
        self._corrected = ComboBox(label="corrected labels", choices=self._labels_layers,
                                nullable=True)
        self._channel = ComboBox(label="nuclear channel", choices=self._channels)
        self._folder = FileEdit(label="training folder", mode="d", value=DEFAULT_FOLDER,
                                tooltip="pairs go to FOLDER/images and FOLDER/masks (the "
                                "layout `nucleiseg train --data FOLDER` reads); runs to "
                                "FOLDER/runs")
        self._add = PushButton(text="Add to training set")
        self._pairs = Label(label="pairs", value="")
        self._minutes = FloatSpinBox(label="time budget (min)", value=10.0, min=0.5, max=600,
                                     step=0.5, tooltip="training stops after the last epoch "
                                     "that fits; the best epoch is kept")
        self._learning_rate = FloatSpinBox(label="learning rate", value=FINE_TUNE_LEARNING_RATE,
                                           min=1e-6, max=1e-2, step=1e-5,
                                           tooltip="5e-5 suits a fine-tune: a small step "
                                           "away from the starting model")
        self._batch_size = SpinBox(label="batch size", value=4, min=1, max=64)
        self._start = Label(label="starts from", value="")
        self._fine_tune = PushButton(text="Fine-tune")
        self._runs = ComboBox(label="unfinished run", choices=self._resumable, nullable=True)
        self._resume = PushButton(text="Resume")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=1000)
        self._stage = Label(label="", value="")
        self._status = Label(label="result", value="")
        super().__init__(widgets=[
            self._image, self._corrected, self._channel, self._folder, self._add, self._pairs,
            self._minutes, self._learning_rate, self._batch_size, self._start,
            self._fine_tune, self._runs, self._resume, self._cancel, self._progress,
            self._stage, self._status])

        self._image.changed.connect(self._image_changed)
        self._corrected.changed.connect(self._labels_changed)
        self._folder.changed.connect(self._folder_changed)
        self._add.changed.connect(self.add_to_training_set)
        self._fine_tune.changed.connect(self.start_fine_tune)
        self._resume.changed.connect(self.start_resume)
        self._cancel.changed.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)
        self._layers_changed()
        self._folder_changed()

    # ------------------------------------------------------------ choices

    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_layers(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels)]

    def _channels(self, _widget=None):
        layer = self._image.value
        if layer is None or layer.multiscale:
            return [("grey", None)]
        shape = layer.data.shape
        if layer.rgb:
            names = ("red", "green", "blue", "alpha")
            return [("colour (as is)", None)] + [(f"{i} ({names[i]})", i)
                                                 for i in range(shape[-1])]
        if len(shape) == 3:
            return [(f"{i} of axis 0", i) for i in range(shape[0])]
        return [("grey", None)]

    def _resumable(self, _widget=None):
        return [(run.name, run) for run in resumable_runs(self.folder())]

    def folder(self) -> Path:
        return Path(self._folder.value).expanduser()

    def _layers_changed(self, _event=None):
        self._image.reset_choices()
        self._corrected.reset_choices()
        self._image_changed()

    def _image_changed(self, _value=None):
        """Pick '<image> nuclei' as the labels, and its channel, when there is one."""
        from nucleiseg.integrations.napari._results import result_layer_name

        self._channel.reset_choices()
        image = self._image.value
        if image is not None:
            name = result_layer_name(image.name)
            if name in self.viewer.layers:
                self._corrected.value = self.viewer.layers[name]
        self._labels_changed()

    def _labels_changed(self, _value=None):
        labels = self._corrected.value
        channel = (labels.metadata.get("nucleiseg") or {}).get("channel") if labels else None
        if channel is not None and channel in self._channel.choices:
            self._channel.value = channel

    def _folder_changed(self, _value=None):
        count = count_pairs(self.folder())
        self._pairs.value = f"{count} in {self.folder()}"
        self._runs.reset_choices()
        self._resume.enabled = self._runs.value is not None and not self.running
        try:
            self._start.value = start_model(self.model_in_use()).name
        except Exception as error:  # an export without its .keras, a half-chosen file
            self._start.value = str(error)

    def segment_widget(self):
        """The viewer's Segment nuclei widget, if open."""
        from nucleiseg.integrations.napari._widget import segment_widgets

        def unwrapped(viewer):  # napari hands each widget its own proxy of the viewer
            return getattr(viewer, "__wrapped__", viewer)

        found = [widget for widget in segment_widgets()
                 if unwrapped(widget.viewer) is unwrapped(self.viewer)]
        return found[-1] if found else None

    def model_in_use(self) -> Path | None:
        """The Segment widget's model (None: bundled)."""
        widget = self.segment_widget()
        return widget.model_path() if widget is not None else None

    # ------------------------------------------------------------ adding pairs

    def add_to_training_set(self, _value=None) -> str | None:
        """Write the chosen image and labels layers as a pair; returns the name written."""
        image, labels = self._image.value, self._corrected.value
        folder = self.folder()
        try:
            if image is None or labels is None:
                raise ValueError("choose an image and its corrected labels layer")
            if image.multiscale:
                raise ValueError("a multiscale (whole-slide) layer is too large to add as it "
                                 "is; save a region as its own image")
            saved = labels.metadata.get(SAVED_AS, {})
            name, notes = add_pair(folder, image.name, image.data, bool(image.rgb),
                                   labels.data, self._channel.value,
                                   replace=saved.get(str(folder.resolve())))
        except Exception as error:  # shown, nothing written
            self._status.value = f"not added: {error}"
            return None
        labels.metadata[SAVED_AS] = {**saved, str(folder.resolve()): name}
        self._status.value = "\n".join([f"added {name}", *notes])
        self._folder_changed()
        return name

    # ------------------------------------------------------------ training

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start_fine_tune(self, _value=None):
        try:
            init_model = start_model(self.model_in_use())
        except Exception as error:
            self._status.value = str(error)
            return
        self._start.value = init_model.name
        self._launch(fine_tune, self.folder(), init_model, minutes=float(self._minutes.value),
                     learning_rate=float(self._learning_rate.value),
                     batch_size=int(self._batch_size.value))

    def start_resume(self, _value=None):
        run = self._runs.value
        if run is None:
            self._status.value = "no unfinished run in this folder"
            return
        self._launch(resume_run, run)

    def _launch(self, function, *args, **kwargs):
        from napari.qt.threading import create_worker

        if self.running:
            return
        self._cancel_event.clear()
        kwargs.update(report=self._relay.progress.emit, cancelled=self._cancel_event.is_set)
        self.worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True,
                                    **kwargs)  # errors: shown by _failed
        self.worker.returned.connect(self._finished)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._stopped)
        for button in (self._fine_tune, self._resume, self._add):
            button.enabled = False
        self._cancel.enabled = True
        self._status.value = ""
        self._stage.value = "loading the data and the model"
        self._progress.value = 0
        self.worker.start()

    def cancel(self, _value=None):
        if self.running:
            self._cancel_event.set()
            self._stage.value = "cancelling at the next batch…"

    def _on_progress(self, fraction: float, text: str):
        self._progress.value = int(round(1000 * fraction))
        self._stage.value = text

    def _finished(self, result: dict):
        self._status.value = result["message"]
        if result["model"] is not None:
            self.use_model(result["model"])

    def use_model(self, path: Path) -> None:
        """Add a fine-tuned model to the Segment widget's model menu and select it (opening
        the widget in a napari window when it is not open)."""
        widget = self.segment_widget()
        if widget is None and getattr(self.viewer, "window", None) is not None:
            try:
                _, widget = self.viewer.window.add_plugin_dock_widget("nucleiseg",
                                                                      "Segment nuclei")
            except Exception:  # not installed as a plugin: the model is on disk
                widget = None
        if widget is not None:
            widget.add_model(path, model_label(Path(path).parent))
            self._start.value = Path(path).parent.name

    def _failed(self, error):
        self._status.value = (f"not started: {error}" if isinstance(error, (ValueError,
                                                                            Cancelled))
                              else f"failed: {error}")

    def _stopped(self):
        self.worker = None
        for button in (self._fine_tune, self._add):
            button.enabled = True
        self._cancel.enabled = False
        self._stage.value = ""
        self._folder_changed()

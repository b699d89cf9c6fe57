"""The napari dock widget: segment the nuclei of an Image layer with a nucleiseg model.

The computation (`_segment.segment_layer_data`) runs in a napari worker thread, so the viewer
stays responsive; it reports every model call (tile) and every block to the progress bar, and
the Cancel button stops it at the next one. The result becomes a Labels layer '<image> nuclei'
whose features are the measurements (hover a nucleus to see them) and a Points layer at the
centroids (`_results.add_result_layers`).
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from nucleiseg.integrations.napari._results import add_result_layers, channel_choices, layer_inputs
from nucleiseg.integrations.napari._segment import Progress

BUNDLED = "bundled"
_INSTANCES: weakref.WeakSet = weakref.WeakSet()  # open widgets (Correct and retrain adds models)


def segment_widgets() -> list:
    return list(_INSTANCES)


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued Qt signal)."""

    progress = Signal(int, int, str)


def parse_diameter(text: str) -> float | str | None:
    """'auto' | a number of pixels | '' (None: use the scale)."""
    from nucleiseg.inference.predict import parse_diameter as diameter_of

    return diameter_of(text, blank=True)


def model_record(path: Path | None) -> dict:
    """The record (configuration, tuned post-processing, nucleus size) of a model file
    (None: the bundled one), without loading the model itself."""
    from nucleiseg.inference.engines import engine_of_export, read_export_record
    from nucleiseg.model.saving import read_record, resolve_model_path

    path = resolve_model_path(path)
    return read_export_record(path) if engine_of_export(path) else read_record(path)


class SegmentNuclei(Container):
    """Image layer, model, channel, nucleus diameter, post-processing thresholds, TTA; Run
    and Cancel, a progress bar, and what the last run found."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self._engines: dict = {}  # model path -> (engine, record), loaded once
        self._record: dict = {}
        self._cancel_event = threading.Event()
        self.worker = None
        self._done = False
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        _INSTANCES.add(self)

        self._image = ComboBox(label="image", choices=self._image_layers, nullable=True)
        self._model = ComboBox(label="model", value=BUNDLED,
                               choices=[("bundled (general + H&E, int8 ONNX)", BUNDLED),
                                        ("model file", "file")])
        self._model_file = FileEdit(label="model file", filter="*.keras *.onnx *.tflite",
                                    visible=False)
        self._channel = ComboBox(label="channel", choices=self._channels)
        self._diameter = LineEdit(label="diameter (px)", value="auto",
                                  tooltip="typical nucleus diameter in pixels, or auto: "
                                  "estimated, and the image rescaled for the model; empty: use "
                                  "the scale")
        self._scale = FloatSpinBox(label="scale", value=1.0, min=0.25, max=4.0, step=0.05,
                                   tooltip="resize factor for the model when the diameter is "
                                   "empty (<1: nuclei larger than in training)")
        self._foreground = FloatSpinBox(label="foreground threshold", min=0.05, max=0.95,
                                        step=0.05, tooltip="nucleus probability threshold")
        self._min_size = SpinBox(label="min size (px)", min=0, max=1_000_000,
                                 tooltip="remove nuclei smaller than this")
        self._min_confidence = FloatSpinBox(label="min confidence", min=0.0, max=1.0, step=0.05,
                                            tooltip="remove nuclei whose mean nucleus "
                                            "probability is below this")
        self._cells = SpinBox(label="cells: grow (px)", value=0, min=0, max=1000,
                              tooltip="0: nuclei only; else each nucleus grown outward by up "
                              "to this many pixels without overlapping its neighbours, as a "
                              "second Labels layer '<image> cells' (same ids)")
        self._stain = CheckBox(text="match H&E stain", value=True,
                               tooltip="colour images are matched to the stain of the model's "
                               "H&E training tiles before the model (when its record has one)")
        self._tta = ComboBox(label="test-time augm.", value=1,
                             choices=[("none", 1), ("4 flips", 4), ("8 flips + rotations", 8)],
                             tooltip="views averaged per tile; with the bundled models, colour "
                             "(H&E) images read whole get at least 4")
        self._run = PushButton(text="Segment nuclei")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self._stage = Label(label="", value="")
        self._status = Label(label="result", value="")
        super().__init__(widgets=[
            self._image, self._model, self._model_file, self._channel, self._diameter,
            self._scale, self._foreground, self._min_size, self._min_confidence, self._cells,
            self._stain, self._tta, self._run, self._cancel, self._progress, self._stage,
            self._status])

        self._model.changed.connect(self._model_changed)
        self._model_file.changed.connect(self._model_changed)
        self._image.changed.connect(lambda _: self._channel.reset_choices())
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)
        self._model_changed()

    # ------------------------------------------------------------ choices and defaults

    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _channels(self, _widget=None):
        return channel_choices(self._image.value)

    def _layers_changed(self, _event=None):
        self._image.reset_choices()
        self._channel.reset_choices()

    def model_path(self) -> Path | None:
        if self._model.value == BUNDLED:
            return None
        if self._model.value != "file":  # a model added by add_model
            return Path(self._model.value)
        path = Path(self._model_file.value)
        if not path.is_file():
            raise ValueError("choose a model file (.keras, .onnx or .tflite)")
        return path

    def add_model(self, path: Path, label: str) -> None:
        """Add a model file to the model menu (a fine-tune's result) and select it."""
        choices = [(label, str(path)), *(c for c in self._model._widget._mgui_get_choices()
                                         if c[1] != str(path))]
        self._model.choices = choices
        if str(path) not in self._engines and Path(path).suffix == ".keras":
            # loaded here, in the main thread: a Keras model first loaded in the worker
            # thread crashed Qt offscreen (docs/napari.md, Correct and retrain)
            from nucleiseg.inference.engines import load_engine

            self._engines[str(path)] = load_engine(Path(path))
        self._model.value = str(path)

    def _model_changed(self, _value=None):
        """Show the file chooser for a model file; take that model's tuned post-processing
        and nucleus size as the defaults."""
        from nucleiseg.algorithms.instances import instance_options_from

        self._model_file.visible = self._model.value == "file"
        try:
            record = model_record(self.model_path())
        except Exception as error:  # a half-chosen or foreign file: say so
            self._status.value = f"model: {error}"
            return
        self._record = record
        tuned = instance_options_from(record)
        self._foreground.value = tuned.foreground_threshold
        self._min_size.value = tuned.min_size
        self._min_confidence.value = tuned.min_confidence
        sized = bool((record.get("nucleus_size") or {}).get("median_diameter"))
        self._diameter.value = "auto" if sized else "not in the model's record"
        self._diameter.enabled = sized
        self._diameter.tooltip = (self._diameter.tooltip if sized else
                                  "this model records no nucleus size: set the scale instead")
        self._status.value = ""

    def settings(self):
        """(PredictOptions, InstanceOptions) from the widget's fields and the model record."""
        from nucleiseg.algorithms.instances import instance_options_from
        from nucleiseg.inference.predict import options_for

        diameter = parse_diameter(self._diameter.value) if self._diameter.enabled else None
        sizing = {"diameter": diameter} if diameter is not None else {
            "diameter": None, "scale": float(self._scale.value)}
        options = options_for(self._record, stain=bool(self._stain.value),
                              tta=int(self._tta.value), **sizing)
        # a field left at the model's value keeps the model's values per image kind (H&E)
        tuned = instance_options_from(self._record)
        changed = {name: value for name, value in (
            ("foreground_threshold", float(self._foreground.value)),
            ("min_size", int(self._min_size.value)),
            ("min_confidence", float(self._min_confidence.value)))
            if not np.isclose(value, getattr(tuned, name))}
        return options, instance_options_from(self._record, **changed)

    # ------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self, _value=None):
        """Start segmenting the chosen layer in a worker thread."""
        from napari.qt.threading import create_worker

        if self.running:
            return
        layer = self._image.value
        try:
            if layer is None:
                raise ValueError("open an image first (File > Open, or File > Open Sample > "
                                 "nucleiseg)")
            model_path = self.model_path()
            options, instance_options = self.settings()
        except Exception as error:  # shown to the user, nothing started
            self._status.value = str(error)
            return
        job = {**layer_inputs(layer), "channel": self._channel.value, "options": options,
               "instance_options": instance_options}
        cells = int(self._cells.value)
        self._cancel_event.clear()
        progress = Progress(report=self._relay.progress.emit,
                            cancelled=self._cancel_event.is_set)
        self.worker = create_worker(self._compute, model_path, job, progress, cells,
                                    _start_thread=False)
        self.worker.returned.connect(lambda result: self._finished(layer, job, result))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._stopped)
        self._run.enabled, self._cancel.enabled = False, True
        self._status.value = ""
        self._done = False
        self._stage.value = "loading the model"
        self._progress.max, self._progress.value = 0, 0
        self.worker.start()

    def _compute(self, model_path, job, progress, cells: int = 0):
        """In the worker thread: load the model (once), segment, grow the cells when asked
        -> (LayerResult, cells or None); None when cancelled."""
        from nucleiseg.errors import Cancelled
        from nucleiseg.inference.engines import load_engine
        from nucleiseg.integrations.napari._results import grow_cells
        from nucleiseg.integrations.napari._segment import segment_layer_data

        key = str(model_path)
        if key not in self._engines:
            self._engines[key] = load_engine(model_path)
        engine, record = self._engines[key]
        try:
            result = segment_layer_data(engine=engine, record=record, progress=progress, **job)
        except Cancelled:
            return None
        return result, (grow_cells(result.labels, cells) if cells else None)

    def cancel(self, _value=None):
        if self.running:
            self._cancel_event.set()
            self._stage.value = "cancelling…"

    def _on_progress(self, done: int, total: int, what: str):
        self._progress.max = max(total, 0)
        self._progress.value = min(done, total) if total else 0
        self._stage.value = f"{what}: {done}/{total}" if total else f"{what}: {done}"

    def _finished(self, layer, job, result):
        if result is None:
            self._status.value = "cancelled"
            return
        result, cells = result
        add_result_layers(self.viewer, layer, result, job["channel"], cells=cells)
        self._status.value = result.summary()
        self._done = True

    def _failed(self, error):
        self._status.value = f"failed: {error}"

    def _stopped(self):
        self.worker = None
        self._run.enabled, self._cancel.enabled = True, False
        self._progress.max, self._progress.value = 1, int(self._done)  # 100% when done
        self._stage.value = ""

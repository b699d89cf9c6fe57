"""Inference engines: one trained model run by Keras, ONNX Runtime or TFLite (LiteRT).

An engine maps a batch of normalised tiles (N, H, W, 3) float32 to logits (N, H, W, C). The
exports (`nucleiseg export`) carry the model's record (configuration, tuned post-processing,
where they came from): inside the ONNX file's metadata, in `<file>.tflite.json` beside a TFLite
file, in `nucleiseg.json` inside a SavedModel folder.

Exports beside `name.keras` are found by name: `name.onnx`, `name.int8.onnx`, `name.tflite`.
With engine "auto", a `.keras` model runs on ONNX Runtime when onnxruntime is installed and an
up-to-date export lies beside it (the bundled model ships with both ONNX exports), the int8 one
first: on 2 CPU cores it is the fastest engine measured (docs/performance.md). ONNX Runtime
and TFLite need no TensorFlow.

ONNX Runtime is installed with nucleiseg; TensorFlow and Keras only with the 'train' extra
(`pip install 'nucleiseg[train]'`), for training, evaluation, export and --engine keras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from nucleiseg.errors import UsageError, file_error

ENGINES = ("auto", "keras", "onnx", "onnx-int8", "tflite")
AUTO_ORDER = ("onnx-int8", "onnx")  # fastest first (docs/performance.md)
RECORD_KEY = "nucleiseg"  # ONNX metadata key; also the SavedModel's nucleiseg.json
TRAIN_EXTRA = "pip install 'nucleiseg[train]'"  # TensorFlow and Keras
TENSORFLOW_MODULES = ("tensorflow", "keras", "tensorboard")  # what the 'train' extra brings


@dataclasses.dataclass(frozen=True)
class Engine:
    """`predict_logits`: normalised tiles (N, H, W, 3) float32 -> logits (N, H, W, C).
    `colour`: another engine that colour (H&E) images run on instead (the bundled models:
    nucleiseg.inference.predict.segment_checked picks by the image's kind)."""

    name: str
    predict_logits: Callable[[np.ndarray], np.ndarray]
    num_classes: int
    colour: Engine | None = None

    def for_kind(self, kind: str) -> Engine:
        """The engine an image of `kind` (preprocess.image_kind) runs on."""
        return self.colour if self.colour is not None and kind == "histology" else self

    def wrapped(self, wrap: Callable) -> Engine:
        """This engine (and its colour one) with each predict_logits replaced by
        wrap(predict_logits): a lock, a counter, a check for Cancel."""
        return Engine(self.name, wrap(self.predict_logits), self.num_classes,
                      None if self.colour is None else self.colour.wrapped(wrap))


@contextlib.contextmanager
def native_stderr_silenced():
    """Send what C++ libraries write to stderr (TensorFlow's start-up notices, LiteRT's
    'Created XNNPACK delegate') to /dev/null; Python exceptions still surface."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow without its C++ start-up log (TF_CPP_MIN_LOG_LEVEL no longer
    silences those lines)."""
    import sys

    if sys.modules.get("tensorflow") is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        import tensorflow  # noqa: F401


def import_keras_quietly() -> None:
    """TensorFlow (quietly) and Keras: what train, evaluate and export need. Raises
    ModuleNotFoundError when either is not installed (see `lacks_tensorflow`)."""
    import_tensorflow_quietly()
    import keras  # noqa: F401


def lacks_tensorflow(error: ImportError) -> bool:
    """Whether an ImportError says TensorFlow, Keras or TensorBoard is missing: the 'train'
    extra is not installed (TRAIN_EXTRA)."""
    return (getattr(error, "name", None) or "").split(".")[0] in TENSORFLOW_MODULES


def keras_engine(model) -> Engine:
    """A Keras model in inference mode, through its compiled predict function (a graph: about
    1.8x faster than calling the model eagerly on 512 px tiles)."""
    return Engine("keras", lambda tiles: np.asarray(model.predict_on_batch(tiles)),
                  int(model.output_shape[-1]))


def as_engine(model_or_engine) -> Engine:
    return model_or_engine if isinstance(model_or_engine, Engine) else keras_engine(model_or_engine)


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_threads(threads: int | None = None) -> int:
    """Threads for ONNX Runtime and TFLite: `threads` when given (predict --threads; a Dask
    worker gives its own thread count), else the cores this process may run on."""
    return threads if threads else usable_cores()


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle intra-op threads sleep instead of spinning, leaving the cores to the stages that
    # overlap the model (infer.overlapped_outcomes) and to other processes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_engine(path: Path, session=None, name: str = "onnx") -> Engine:
    session = session or onnx_session(path)
    source = session.get_inputs()[0].name
    return Engine(name, lambda tiles: session.run(None, {source: tiles})[0],
                  int(session.get_outputs()[0].shape[-1]))


def tflite_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import_tensorflow_quietly()
        from tensorflow.lite import Interpreter
    return Interpreter


def tflite_engine(path: Path, threads: int | None = None) -> Engine:
    interpreter = tflite_interpreter_class()(model_path=str(path),
                                             num_threads=cpu_threads(threads))
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    allocated = {"shape": None}

    def predict(tiles):
        if allocated["shape"] != tiles.shape:  # dynamic input size: re-plan once per shape
            interpreter.resize_tensor_input(source["index"], tiles.shape, strict=False)
            with native_stderr_silenced():
                interpreter.allocate_tensors()
            allocated["shape"] = tiles.shape
        interpreter.set_tensor(source["index"], np.ascontiguousarray(tiles, np.float32))
        with native_stderr_silenced():
            interpreter.invoke()
        return interpreter.get_tensor(target["index"]).copy()

    return Engine("tflite", predict, int(target["shape_signature"][-1]))


# ---------------------------------------------------------------- records of exported models


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tflite_record_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".json")


def read_export_record(path: Path, session=None) -> dict:
    """The record an export carries (see the module docstring); `session`: an ONNX Runtime
    session of `path` already open."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "no such model file")
    try:
        if path.is_dir():
            return json.loads((path / f"{RECORD_KEY}.json").read_text())
        if path.suffix == ".tflite":
            return json.loads(tflite_record_path(path).read_text())
        session = session or onnx_session(path)
        return json.loads(session.get_modelmeta().custom_metadata_map[RECORD_KEY])
    except ImportError as exc:
        raise UsageError(f"{path}: reading ONNX models needs onnxruntime ({exc}), which "
                         "nucleiseg installs: pip install onnxruntime") from None
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise file_error(path, f"not a nucleiseg export ({type(exc).__name__}: {exc}); "
                         "make one with nucleiseg export") from None


def open_export(path: Path, engine: str, threads: int | None = None) -> tuple[Engine, dict]:
    """(engine, record) of an export file; an ONNX file is opened once for both. `threads`:
    for ONNX Runtime and TFLite (None: every core this process may use)."""
    if engine == "tflite":
        return tflite_engine(path, threads), read_export_record(path)
    session = onnx_session(path, threads)
    return onnx_engine(path, session, engine), read_export_record(path, session)


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_path(keras_path: Path, engine: str) -> Path:
    """Where the `engine` export of a .keras model lies (name.onnx, name.int8.onnx, ...)."""
    keras_path = Path(keras_path)
    suffix = {"onnx": ".onnx", "onnx-int8": ".int8.onnx", "tflite": ".tflite"}[engine]
    return keras_path.with_name(keras_path.stem + suffix)


def engine_of_export(path: Path) -> str | None:
    name = Path(path).name
    if name.endswith(".int8.onnx"):
        return "onnx-int8"
    return {".onnx": "onnx", ".tflite": "tflite"}.get(Path(path).suffix)


def matching_export(keras_path: Path, engine: str, threads: int | None = None) -> Engine | None:
    """The `engine` export beside a .keras model, opened, if it was made from this very file."""
    export = export_path(keras_path, engine)
    if not export.exists():
        return None
    try:
        opened, record = open_export(export, engine, threads)
    except Exception:  # unreadable or foreign: not this model's export
        return None
    source = record.get("exported_from", {})
    return opened if source.get("sha256") == file_digest(keras_path) else None


def load_engine(model_path: Path | None = None, engine: str = "auto",
                threads: int | None = None) -> tuple[Engine, dict]:
    """(engine, model record) for a .keras model or an export; None: the bundled models,
    the general one with the H&E one for colour images (Engine.colour), on the same engine;
    `threads`: for ONNX Runtime and TFLite (None: every core this process may use)."""
    from nucleiseg.model.saving import bundled_he_model_path

    opened, record = load_one_engine(model_path, engine, threads)
    he_model = bundled_he_model_path() if model_path is None else None
    if he_model is not None:
        opened = dataclasses.replace(opened, colour=load_one_engine(he_model, opened.name,
                                                                    threads)[0])
    return opened, record


def load_one_engine(model_path: Path | None = None, engine: str = "auto",
                    threads: int | None = None) -> tuple[Engine, dict]:
    """(engine, model record) for a .keras model (None: the bundled one) or an export;
    `threads`: for ONNX Runtime and TFLite (None: every core this process may use)."""
    from nucleiseg.model.saving import read_record, resolve_model_path

    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    path = resolve_model_path(model_path)
    kind = engine_of_export(path)
    if kind is not None or path.is_dir():
        if path.is_dir():
            raise UsageError(f"{path}: a SavedModel is for serving elsewhere; predict with the "
                             ".keras model, or an .onnx or .tflite export")
        if engine not in ("auto", kind):
            raise UsageError(f"{path}: a {kind} export runs with --engine {kind}, not {engine}")
        return open_export(path, kind, threads)
    record = read_record(path)
    if engine == "auto":
        for candidate in AUTO_ORDER if onnx_available() else ():
            opened = matching_export(path, candidate, threads)
            if opened is not None:
                return opened, record
        engine = "keras"
    if engine == "keras":
        import_tensorflow_quietly()
        from nucleiseg.model.saving import load_model

        model, record = load_model(path)
        return keras_engine(model), record
    if engine.startswith("onnx") and not onnx_available():
        raise UsageError(f"--engine {engine} needs onnxruntime, which nucleiseg installs: "
                         "pip install onnxruntime")
    opened = matching_export(path, engine, threads)
    if opened is None:
        wanted = export_path(path, engine)
        raise UsageError(f"{path}: no up-to-date {engine} export beside it ({wanted.name}); "
                         f"make one with: nucleiseg export --model {path} --format {engine} "
                         f"--out {wanted}")
    return opened, record

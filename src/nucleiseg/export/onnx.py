"""The exports themselves: a trained .keras model as a SavedModel, ONNX (fp32 or int8) or
TFLite file; `nucleiseg export` (nucleiseg.export.exporter) picks one or a bioimage.io package.

Every export has dynamic batch, height and width (any multiple of 32), carries the model's
record (nucleiseg.inference.engines) with the SHA-256 of the .keras file it came from, is checked
against Keras on a test batch before it is kept, and is written atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from nucleiseg.errors import NucleisegError, UsageError
from nucleiseg.inference.engines import (
    RECORD_KEY,
    onnx_engine,
    tflite_engine,
    tflite_record_path,
)
from nucleiseg.io.runfiles import current_umask

TOLERANCE = 1e-4  # largest allowed difference of softmax probabilities from Keras
INT8_TOLERANCE = 0.01  # int8: largest allowed share of calibration pixels whose class changes
ONNX_OPSET = 17


class ExportError(NucleisegError):
    """The converter failed, or its output disagrees with the Keras model."""

    exit_code = 1


def input_signature():
    import keras

    return [keras.InputSpec(shape=(None, None, None, 3), dtype="float32", name="image")]


def build_savedmodel(model, record: dict, work: Path) -> Path:
    folder = work / "saved_model"
    model.export(str(folder), format="tf_saved_model", input_signature=input_signature(),
                 verbose=False)
    (folder / f"{RECORD_KEY}.json").write_text(json.dumps(record, indent=2))
    return folder


def build_onnx(model, record: dict, work: Path) -> Path:
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs tf2onnx and onnx: "
                         "pip install 'nucleiseg[export]'") from None
    path = work / "model.onnx"
    with warnings.catch_warnings():  # tf2onnx's numpy-2 notices
        warnings.simplefilter("ignore", FutureWarning)
        model.export(str(path), format="onnx", input_signature=input_signature(),
                     opset_version=ONNX_OPSET, verbose=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = RECORD_KEY, json.dumps(record)
    onnx.save(proto, str(path))
    return path


def build_int8(model, record: dict, work: Path, calibration: Path | None):
    """(path of the int8 ONNX model, share of calibration pixels whose class changes)."""
    from nucleiseg.algorithms.preprocess import normalize_image
    from nucleiseg.export.quantize import calibration_tiles, quantize_onnx
    from nucleiseg.io.images import bundled_sample, find_images, read_image

    folder = calibration if calibration is not None else bundled_sample("train")
    paths = find_images([folder])[:64]
    tiles = calibration_tiles([normalize_image(read_image(p)) for p in paths], count=32)
    fp32 = build_onnx(model, record, work)
    path = work / "model.int8.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints calibration progress
        quantize_onnx(fp32, path, tiles)
    session = onnx_engine(path)
    expected = np.argmax(np.asarray(model.predict_on_batch(tiles[:8])), axis=-1)
    changed = float(np.mean(np.argmax(session.predict_logits(tiles[:8]), axis=-1) != expected))
    return path, changed


def build_tflite(model, record: dict, work: Path) -> Path:
    import tensorflow as tf

    folder = build_savedmodel(model, record, work)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    path = work / "model.tflite"
    path.write_bytes(converter.convert())
    tflite_record_path(path).write_text(json.dumps(record, indent=2))
    return path


def check_against_keras(model, fmt: str, built: Path) -> float:
    """Largest softmax difference from Keras on two tile sizes (dynamic shapes exercised)."""
    from nucleiseg.inference.predict import softmax

    if fmt == "savedmodel":
        import tensorflow as tf

        served = tf.saved_model.load(str(built)).signatures["serving_default"]
        predict = lambda x: next(iter(served(image=tf.constant(x)).values())).numpy()  # noqa: E731
    else:
        predict = (onnx_engine if fmt == "onnx" else tflite_engine)(built).predict_logits
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in ((2, 64, 96, 3), (1, 128, 128, 3)):
        tiles = rng.random(shape, dtype=np.float32)
        expected = softmax(np.asarray(model.predict_on_batch(tiles)))
        worst = max(worst, float(np.abs(softmax(predict(tiles)) - expected).max()))
    return worst


def install(built: Path, out: Path, fmt: str, record: dict) -> None:
    """Move the checked export into place (replacing an old one only at the last moment)."""
    if fmt == "tflite":
        sidecar = tflite_record_path(out)
        os.replace(tflite_record_path(built), sidecar.with_name(f".{sidecar.name}.tmp"))
        os.replace(built, out)
        os.replace(sidecar.with_name(f".{sidecar.name}.tmp"), sidecar)
        return
    if built.is_dir():
        os.chmod(built, 0o777 & ~current_umask())  # mkdtemp made it private
    if out.is_dir():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, out)

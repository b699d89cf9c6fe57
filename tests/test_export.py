"""Exports (SavedModel, ONNX, TFLite) and the engines that run them."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_disks, write_image

from nucleiseg.errors import UsageError

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fmt,name", [("onnx", "model.onnx"), ("tflite", "model.tflite"),
                                      ("savedmodel", "model_savedmodel")])
def test_exports_agree_with_keras_and_carry_the_record(tiny_model, tmp_path, fmt, name):
    pytest.importorskip("tf2onnx" if fmt == "onnx" else "tensorflow")
    from nucleiseg.export.exporter import export_model
    from nucleiseg.inference.engines import load_engine, read_export_record
    from nucleiseg.inference.predict import predict_quantised
    from nucleiseg.model.saving import load_model

    keras_model = tmp_path / "model.keras"
    shutil.copy(tiny_model, keras_model)
    out = tmp_path / name
    result = export_model(keras_model, fmt, out, log=lambda *_: None)
    assert result["max_difference"] < 1e-4
    record = read_export_record(out)
    assert record["config"]["target"] == "boundary" and record["export_format"] == fmt
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        export_model(keras_model, fmt, out, log=lambda *_: None)
    if fmt == "savedmodel":
        return
    model, keras_record = load_model(keras_model)
    engine, _ = load_engine(keras_model, fmt)
    assert engine.name == fmt
    image = make_disks((150, 130), seed=3)[0]  # not a multiple of 32: padded, then cut back
    expected = predict_quantised(model, image, keras_record["config"])
    got = predict_quantised(engine, image, record["config"])
    assert np.abs(expected.astype(int) - got).max() <= 1  # 1/255 of probability


def test_auto_engine_uses_an_up_to_date_onnx_export_only(tiny_model, tmp_path):
    pytest.importorskip("tf2onnx")
    from nucleiseg.export.exporter import export_model
    from nucleiseg.inference.engines import load_engine

    keras_model = tmp_path / "model.keras"
    shutil.copy(tiny_model, keras_model)
    assert load_engine(keras_model)[0].name == "keras"
    with pytest.raises(UsageError, match="no up-to-date onnx export.*nucleiseg export"):
        load_engine(keras_model, "onnx")
    export_model(keras_model, "onnx", tmp_path / "model.onnx", log=lambda *_: None)
    assert load_engine(keras_model)[0].name == "onnx"
    assert load_engine(keras_model, "keras")[0].name == "keras"
    with keras_model.open("ab") as handle:  # the .keras file changed: its export is stale
        handle.write(b"\0")
    assert load_engine(keras_model)[0].name == "keras"


def test_the_bundled_model_ships_up_to_date_onnx_exports():
    pytest.importorskip("onnxruntime")
    from nucleiseg.inference.engines import load_engine, matching_export
    from nucleiseg.model.saving import bundled_model_path

    assert matching_export(bundled_model_path(), "onnx") is not None
    assert matching_export(bundled_model_path(), "onnx-int8") is not None
    assert load_engine(None)[0].name == "onnx-int8"  # the fastest, picked by default


def test_int8_export_keeps_the_classes_and_is_preferred(tmp_path):
    pytest.importorskip("tf2onnx")
    from nucleiseg.export.exporter import export_model
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.model.saving import bundled_model_path

    keras_model = tmp_path / "nuclei.keras"
    shutil.copy(bundled_model_path(), keras_model)
    export_model(keras_model, "onnx", tmp_path / "nuclei.onnx", log=lambda *_: None)
    result = export_model(keras_model, "onnx-int8", tmp_path / "nuclei.int8.onnx",
                          log=lambda *_: None)
    assert result["max_difference"] < 0.01  # share of calibration pixels changing class
    assert result["bytes"] < 0.5 * (tmp_path / "nuclei.onnx").stat().st_size
    engine, record = load_engine(keras_model)
    assert engine.name == "onnx-int8" and record["config"]["target"] == "boundary"
    assert load_engine(keras_model, "onnx")[0].name == "onnx"


def test_predict_with_onnx_needs_no_tensorflow_nor_matplotlib(tmp_path):
    pytest.importorskip("onnxruntime")
    write_image(tmp_path / "in" / "a.png", make_disks(seed=4)[0])
    code = ("import sys; from nucleiseg.cli import main; "
            f"code = main(['predict', {str(tmp_path / 'in')!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]); "
            "print(code, 'tensorflow' in sys.modules, 'matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.splitlines()[-1] == "0 False False", result.stdout + result.stderr
    assert "engine: onnx" in result.stdout
    assert (tmp_path / "out" / "a_labels.tif").exists()


def test_export_refuses_a_wrong_suffix_and_a_non_model(tmp_path):
    from nucleiseg.errors import DataError
    from nucleiseg.export.exporter import export_model

    with pytest.raises(UsageError, match="must end in .onnx"):
        export_model(None, "onnx", tmp_path / "model.bin")
    (tmp_path / "fake.keras").write_text("not a model")
    with pytest.raises(DataError, match="fake.keras: not a nucleiseg model"):
        export_model(tmp_path / "fake.keras", "tflite", tmp_path / "m.tflite")
    assert not list(tmp_path.glob("m.tflite*")) and not list(tmp_path.glob(".m.tflite*"))

"""Engines (nucleiseg.inference.engines): what runs the model, and on how many threads."""

from pathlib import Path

import numpy as np
import pytest

from nucleiseg.errors import UsageError
from nucleiseg.inference.engines import (
    Engine,
    as_engine,
    cpu_threads,
    engine_of_export,
    export_path,
    load_engine,
    onnx_session,
    usable_cores,
)
from nucleiseg.model.saving import bundled_model_path


def test_threads_are_an_option_not_an_environment_variable(monkeypatch):
    monkeypatch.setenv("NUCLEISEG_THREADS", "7")  # ignored: no hidden settings
    assert cpu_threads() == usable_cores()
    assert cpu_threads(3) == 3
    session = onnx_session(export_path(bundled_model_path(), "onnx-int8"), threads=1)
    assert session.get_session_options().intra_op_num_threads == 1


def test_load_engine_picks_the_fastest_up_to_date_export_and_refuses_unknown_engines():
    engine, record = load_engine(None, threads=1)
    assert engine.name == "onnx-int8" and engine.num_classes == 3
    assert record["config"]["target"] == "boundary"
    with pytest.raises(UsageError, match="--engine must be one of"):
        load_engine(None, "gpu")


def test_the_bundled_models_run_colour_images_on_the_he_one_unless_one_is_named():
    from nucleiseg.model.saving import BUNDLED_HE_MODEL, bundled_he_model_path

    if bundled_he_model_path() is None:
        pytest.skip("no bundled H&E model in this tree")
    engine, _ = load_engine(None, threads=1)
    assert engine.colour is not None and engine.colour.name == engine.name
    assert engine.for_kind("histology") is engine.colour
    assert engine.for_kind("fluorescence") is engine.for_kind("brightfield") is engine
    for name in ("bundled-general", "bundled-he", str(bundled_model_path())):
        assert load_engine(Path(name), threads=1)[0].colour is None, name
    from nucleiseg.model.saving import resolve_model_path

    assert resolve_model_path(Path("bundled-he")).name == BUNDLED_HE_MODEL
    assert resolve_model_path(Path("bundled")) == bundled_model_path()


def test_export_names_and_engines_match():
    keras = bundled_model_path()
    for name in ("onnx", "onnx-int8", "tflite"):
        assert engine_of_export(export_path(keras, name)) == name
    assert engine_of_export(keras) is None


def test_an_engine_is_used_as_it_is_and_gives_logits_per_tile(bundled_engine):
    engine, _ = bundled_engine
    assert as_engine(engine) is engine
    logits = engine.predict_logits(np.zeros((2, 64, 64, 3), np.float32))
    assert logits.shape == (2, 64, 64, 3)
    wrapped = Engine("counting", engine.predict_logits, engine.num_classes)
    assert as_engine(wrapped) is wrapped

import zipfile

import keras
import numpy as np
import pytest
from conftest import TINY_MODEL

from nucleiseg.errors import DataError
from nucleiseg.model.keras_metrics import compile_model
from nucleiseg.model.saving import load_model, read_record, save_model
from nucleiseg.model.unet import build_unet


@pytest.fixture
def trained_model():
    keras.utils.set_random_seed(0)
    model = compile_model(build_unet(**TINY_MODEL))
    x = np.random.default_rng(0).random((4, 64, 64, 3)).astype(np.float32)
    model.fit(x, (x[..., 0] > 0.5).astype(np.uint8), epochs=1, verbose=0)
    return model, x


def test_round_trip_predicts_exactly_the_same(tmp_path, trained_model):
    model, x = trained_model
    before = np.asarray(model(x, training=False))
    record = {"config": {"image_size": 64}, "data": "synthetic"}
    save_model(model, tmp_path / "model.keras", record)
    loaded, got_record = load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), before)
    assert got_record["config"] == {"image_size": 64} and got_record["data"] == "synthetic"
    # still a plain Keras file: keras.models.load_model reads it (custom classes registered)
    plain = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(np.asarray(plain(x, training=False)), before)
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temporary files left


def test_not_a_model_is_a_clear_error(tmp_path):
    fake = tmp_path / "fake.keras"
    fake.write_text("hello")
    with pytest.raises(DataError, match="fake.keras: not a nucleiseg model"):
        load_model(fake)
    with pytest.raises(DataError, match="no such model file"):
        load_model(tmp_path / "absent.keras")


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_foreign_keras_file_and_other_versions_are_refused(tmp_path, trained_model):
    model, _ = trained_model
    model.save(tmp_path / "plain.keras")
    with pytest.raises(DataError, match="without a nucleiseg record"):
        read_record(tmp_path / "plain.keras")
    save_model(model, tmp_path / "m.keras", {})
    with zipfile.ZipFile(tmp_path / "m.keras", "a") as archive:
        archive.writestr("nucleiseg.json", '{"format_version": 99}')
    with pytest.raises(DataError, match="format version 99 is not supported"):
        read_record(tmp_path / "m.keras")

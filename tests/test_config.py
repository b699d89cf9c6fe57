import json

import pytest

from nucleiseg.config import TrainConfig
from nucleiseg.errors import UsageError
from nucleiseg.io.runfiles import write_json


def test_round_trips_through_json(tmp_path):
    config = TrainConfig(image_size=256, decoder_filters=[64, 32, 16, 8], steps_per_epoch=10)
    write_json(tmp_path / "config.json", config.to_dict())
    loaded = TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert loaded == config and loaded.decoder_filters == (64, 32, 16, 8)


@pytest.mark.parametrize("changes,message", [
    ({"encoder_weights": "random"}, "encoder_weights must be one of imagenet, none"),
    ({"early_stopping_monitor": "val_iou"}, "early_stopping_monitor must be one of"),
    ({"freeze_encoder": True}, "needs pretrained encoder weights"),
    ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"steps_per_epoch": 0}, "steps_per_epoch must be at least 1"),
    ({"sampling": "crops", "zoom_augment": 0.5}, "zoom_augment must be at least 1"),
    ({"zoom_augment": 1.5}, "work on random crops: add --sampling crops"),
    ({"intensity_augment": True}, "work on random crops"),
    ({"pale_weight": 3.0}, "pale weights work on random crops"),
    ({"sampling": "crops", "pale_weight": 0.0}, "pale_weight must be positive"),
])
def test_bad_values_name_the_choices(changes, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(**changes)


def test_unknown_keys_are_refused():
    with pytest.raises(UsageError, match="unknown configuration keys: colour"):
        TrainConfig.from_dict({"colour": "red"})


def test_a_fine_tune_takes_the_recipe_of_its_model_unless_told_otherwise():
    from nucleiseg.config import inherit_recipe

    recorded = TrainConfig(image_size=256, sampling="crops", target="boundary",
                           decoder_filters=(256, 128, 64, 32), zoom_augment=3.0,
                           stain_augment=True, learning_rate=0.01, epochs=100).to_dict()
    mine = TrainConfig(image_size=128, epochs=5, learning_rate=1e-4)
    taken = inherit_recipe(mine, recorded, given={"--image-size", "--epochs"})
    assert taken.image_size == 128  # given on the command line: kept
    assert (taken.sampling, taken.target, taken.decoder_filters) == (
        "crops", "boundary", (256, 128, 64, 32))
    assert taken.zoom_augment == 3.0 and taken.stain_augment
    assert taken.epochs == 5 and taken.learning_rate == 1e-4  # never taken from the model
    with pytest.raises(UsageError, match="minutes"):
        TrainConfig(minutes=0)

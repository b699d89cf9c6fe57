import json
import sys

import numpy as np
import pytest
from conftest import TINY_MODEL, disk_samples, write_paired

from nucleiseg.config import TrainConfig
from nucleiseg.errors import UsageError

pytestmark = pytest.mark.slow


def test_default_recipe_learns_and_works_in_inference_mode(tmp_path):
    """From random weights, the default recipe (encoder BatchNorm momentum 0.9) gives a model
    that finds the disks in inference mode, and the run directory holds everything."""
    from nucleiseg.training.fit import train

    data = write_paired(tmp_path / "data", disk_samples(24, shape=(64, 64)))
    config = TrainConfig(image_size=64, epochs=8, batch_size=4, val_fraction=0.25, **TINY_MODEL)
    run_dir, record = train(config, data, tmp_path / "run", verbose=0, log=lambda *_: None)
    native = record["metrics"]["validation_native"]
    assert native["foreground_iou"] > 0.6, native

    for name in ("config.json", "split.json", "model.keras", "history.csv", "curves.png",
                 "metrics.json", "checkpoints/best.weights.h5", "epochs/epoch_001.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("events.out.tfevents*"))
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val"]) == 6 and not set(split["train"]) & set(split["val"])
    assert TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())) == config


def test_training_without_matplotlib_writes_no_figures_and_says_so(tmp_path, monkeypatch):
    from nucleiseg.training.fit import train

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    data = write_paired(tmp_path / "data", disk_samples(8))
    messages = []
    run_dir, _ = train(TrainConfig(image_size=64, epochs=1, batch_size=4, val_fraction=0.25,
                                   **TINY_MODEL), data, tmp_path / "run", verbose=0,
                       log=messages.append)
    assert (run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()
    assert not (run_dir / "curves.png").exists() and not list(run_dir.glob("epochs/*.png"))
    assert any("matplotlib is not installed" in m and "nucleiseg[plots]" in m for m in messages)


def test_existing_run_directory_is_never_overwritten(tmp_path):
    from nucleiseg.training.fit import train

    data = write_paired(tmp_path / "data", disk_samples(4))
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_text("precious")
    with pytest.raises(UsageError, match="already exists"):
        train(TrainConfig(image_size=64, epochs=1, **TINY_MODEL), data, run, log=lambda *_: None)
    assert (run / "model.keras").read_text() == "precious"



def test_several_folders_split_on_their_own_with_whole_patients_held_out(tmp_path):
    from conftest import make_disks, write_paired

    from nucleiseg.training.fit import load_sources, sampling_strata, split_sources

    fluorescence = write_paired(tmp_path / "a", [(f"img{i}", *make_disks(seed=i))
                                                 for i in range(10)])
    tissue = write_paired(tmp_path / "b", [(f"{p:02d}_{t}", *make_disks(seed=10 * p + t))
                                           for p in range(1, 6) for t in range(3)])
    by_name, sources, _ = load_sources([fluorescence, tissue], False, print)
    kinds = {name: "fluorescence" for name in by_name}
    train, val = split_sources(sorted(by_name), sources, kinds, 0.3, 123, "^[^_]+")
    alone = split_sources([f"img{i}" for i in range(10)], {f"img{i}": 0 for i in range(10)},
                          kinds, 0.3, 123)
    assert [n for n in val if sources[n] == 0] == alone[1]  # the first folder's split unmoved
    held_out = {n[:2] for n in val if sources[n] == 1}
    assert held_out and held_out.isdisjoint({n[:2] for n in train if sources[n] == 1})
    strata = sampling_strata(kinds, sources)
    assert strata["img0"] != strata["01_1"]


def test_the_same_image_name_in_two_folders_is_refused(tmp_path):
    from conftest import make_disks, write_paired

    from nucleiseg.errors import DataError
    from nucleiseg.training.fit import load_sources

    first = write_paired(tmp_path / "a", [(f"img{i}", *make_disks(seed=i)) for i in range(3)])
    second = write_paired(tmp_path / "b", [(f"img{i}", *make_disks(seed=i)) for i in range(3)])
    with pytest.raises(DataError, match="also in"):
        load_sources([first, second], False, print)


def test_time_budget_stops_and_a_fine_tune_takes_its_models_recipe(tmp_path):
    """--minutes ends a 50-epoch run after its first epoch; --init-model with no architecture
    options fine-tunes that model (its recipe from its record) and records where it started."""
    from nucleiseg.cli import main
    from nucleiseg.model.saving import read_record

    data = write_paired(tmp_path / "data", disk_samples(8, shape=(64, 64)))
    first = tmp_path / "first"
    assert main(["train", "--data", str(data), "--out", str(first), "--image-size", "64",
                 "--epochs", "50", "--batch-size", "4", "--encoder-alpha", "0.35",
                 "--decoder-filters", "32,16,16,8", "--minutes", "0.001",
                 "--sampling", "crops"]) == 0
    record = read_record(first / "model.keras")
    assert record["metrics"]["epochs_run"] == 1
    assert "time budget of 0.001 minutes" in record["metrics"]["stopped"]
    from nucleiseg.model.saving import load_model, save_model

    model, first_record = load_model(first / "model.keras")  # as if tuned after training
    first_record["postprocessing"] = {"min_confidence": 0.7}
    save_model(model, first / "model.keras", first_record)
    tuned = tmp_path / "tuned"
    # --stain-augment needs random crops: the sampling comes from the starting model's record
    assert main(["train", "--data", str(data), "--out", str(tuned), "--epochs", "1",
                 "--batch-size", "4", "--init-model", str(first / "model.keras"),
                 "--stain-augment", "--freeze-batchnorm"]) == 0
    record = read_record(tuned / "model.keras")
    # it predicts as the model it started from: post-processing and nucleus size
    assert record["postprocessing"] == {"min_confidence": 0.7}
    assert record["nucleus_size"] == first_record["nucleus_size"]
    assert "postprocessing" not in record["init_model"]
    tuned_model, _ = load_model(tuned / "model.keras")
    moved = {w.path: not np.array_equal(w.numpy(), v.numpy())
             for w, v in zip(model.weights, tuned_model.weights, strict=True)}
    assert not any(m for path, m in moved.items() if "moving_" in path or "gamma" in path)
    assert any(m for path, m in moved.items() if path.endswith("kernel"))
    assert record["config"]["sampling"] == "crops" and record["config"]["stain_augment"]
    assert record["config"]["decoder_filters"] == [32, 16, 16, 8]
    assert record["config"]["image_size"] == 64
    assert record["config"]["learning_rate"] == 5e-5  # a fine-tune's default
    assert record["init_model"]["path"] == str(first / "model.keras")

"""Interrupted, killed and NaN trainings; repeatability. These run real training processes."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY_MODEL, disk_samples, write_paired

from nucleiseg.config import TrainConfig
from nucleiseg.errors import TrainingError, UsageError

pytestmark = pytest.mark.slow

TINY_FLAGS = ["--image-size", "64", "--batch-size", "4", "--steps-per-epoch", "3",
              "--encoder-alpha", "0.35", "--decoder-filters", "32,16,16,8",
              "--warmup-steps", "0", "--patience", "50"]


def quiet(*_):
    pass


def start_training(data, run, epochs):
    command = [sys.executable, "-m", "nucleiseg", "train", "--data", str(data), "--out", str(run),
               "--epochs", str(epochs), *TINY_FLAGS]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(process, run, epochs_done, timeout=240):
    """Wait until the run's backup says `epochs_done` epochs are complete."""
    last = run / "checkpoints" / "last.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if last.exists() and json.loads(last.read_text())["epochs_done"] >= epochs_done:
            return
        time.sleep(0.05)
    pytest.fail("training made no progress")


def history_epochs(run):
    rows = (run / "history.csv").read_text().splitlines()[1:]
    return [int(row.split(",")[0]) for row in rows]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_training_resumes_from_last_completed_epoch(tmp_path, how):
    from nucleiseg.cli import main

    data = write_paired(tmp_path / "data", disk_samples(12, shape=(64, 64)))
    run = tmp_path / "run"
    process = start_training(data, run, epochs=8)
    wait_for_epochs(process, run, 2)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    assert not (run / "model.keras").exists()
    if how == signal.SIGTERM:
        assert process.returncode == 130
        assert f"continue with: nucleiseg train --resume {run}" in stderr
    split = (run / "split.json").read_text()
    done = json.loads((run / "checkpoints" / "last.json").read_text())["epochs_done"]
    assert 2 <= done < 8

    assert main(["train", "--resume", str(run)]) == 0
    assert history_epochs(run) == list(range(8))  # no epoch lost or repeated
    assert (run / "split.json").read_text() == split
    record = json.loads((run / "metrics.json").read_text())
    assert record["epochs_run"] == 8
    with pytest.raises(UsageError, match="has finished"):
        from nucleiseg.training.fit import resume
        resume(run, log=quiet)


def test_resume_refuses_other_options_and_non_runs(tmp_path, capsys):
    from nucleiseg.cli import main

    assert main(["train", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a training run directory" in capsys.readouterr().err


def test_resume_continues_the_optimizer_and_early_stopping_state(tmp_path, monkeypatch):
    import keras

    from nucleiseg.training.fit import resume, train

    data = write_paired(tmp_path / "data", disk_samples(12, shape=(64, 64)))
    config = TrainConfig(image_size=64, epochs=3, batch_size=4, steps_per_epoch=3,
                         early_stopping_warmup_steps=0, lr_schedule="cosine", **TINY_MODEL)
    # A run stopped after two epochs: a 2-epoch run whose config then says 3.
    short = TrainConfig.from_dict(config.to_dict() | {"epochs": 2})
    run, _ = train(short, data, tmp_path / "stopped", verbose=0, log=quiet)
    (run / "model.keras").unlink()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    state = json.loads((run / "checkpoints" / "last.json").read_text())

    seen = {}
    original_fit = keras.Model.fit

    def spy(self, *args, callbacks=(), **kwargs):
        seen["iterations"] = int(self.optimizer.iterations.numpy())
        seen["initial_epoch"] = kwargs["initial_epoch"]
        history = original_fit(self, *args, callbacks=callbacks, **kwargs)
        stopper = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
        seen["best_before"] = stopper.state["best"]
        return history

    monkeypatch.setattr(keras.Model, "fit", spy)
    resume(run, verbose=0, log=quiet)
    assert seen["iterations"] == 6 and seen["initial_epoch"] == 2  # the schedule goes on
    assert seen["best_before"] == state["best"]
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epochs_done"] == 3
    assert history_epochs(run) == [0, 1, 2]


def test_same_seed_gives_same_split_and_same_weights_after_one_epoch(tmp_path):
    from nucleiseg.model.saving import load_model
    from nucleiseg.training.fit import train

    data = write_paired(tmp_path / "data", disk_samples(12, shape=(64, 64)))
    config = TrainConfig(image_size=64, epochs=1, batch_size=4, steps_per_epoch=3,
                         deterministic=True, **TINY_MODEL)
    weights, splits = [], []
    for name in ("a", "b"):
        run, _ = train(config, data, tmp_path / name, verbose=0, log=quiet)
        splits.append((run / "split.json").read_text())
        weights.append(load_model(run / "model.keras")[0].get_weights())
    assert splits[0] == splits[1]
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_best_model(tmp_path, monkeypatch):
    import keras

    from nucleiseg.training import fit as train_module

    class PoisonAfter(keras.callbacks.Callback):
        """Make the weights NaN during epoch 3, as a diverging optimiser would."""

        def on_train_batch_begin(self, batch, logs=None):
            if self.params and self.model.optimizer.iterations.numpy() >= 7:
                layer = self.model.layers[-1]
                layer.kernel.assign(np.full(layer.kernel.shape, np.nan, "float32"))

    original_fit = keras.Model.fit

    def fit_with_poison(self, *args, callbacks=(), **kwargs):
        return original_fit(self, *args, callbacks=[PoisonAfter(), *callbacks], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_with_poison)
    data = write_paired(tmp_path / "data", disk_samples(12, shape=(64, 64)))
    config = TrainConfig(image_size=64, epochs=6, batch_size=4, steps_per_epoch=3,
                         early_stopping_warmup_steps=0, **TINY_MODEL)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="NaN in epoch 3.*best model \\(epoch [12]\\)"):
        train_module.train(config, data, run, verbose=0, log=quiet)
    from nucleiseg.model.saving import load_model

    model, record = load_model(run / "model.keras")
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert record["metrics"]["stopped"] == "loss became NaN in epoch 3"
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epochs_done"] == 2


def test_init_model_must_fit_the_architecture(tmp_path):
    from nucleiseg.training.fit import train

    data = write_paired(tmp_path / "data", disk_samples(8, shape=(64, 64)))
    config = TrainConfig(image_size=64, epochs=1, batch_size=4, steps_per_epoch=1, **TINY_MODEL)
    first, _ = train(config, data, tmp_path / "first", verbose=0, log=quiet,
                     command="nucleiseg train --out first")
    # Fine-tuning from it works and starts from its weights...
    second, record = train(config, data, tmp_path / "second", verbose=0, log=quiet,
                           init_model=first / "model.keras")
    assert record["init_model"]["path"] == str(first / "model.keras")
    assert record["init_model"]["command"] == "nucleiseg train --out first"  # the lineage
    # ...another architecture is refused before anything is written.
    other = TrainConfig.from_dict(config.to_dict() | {"target": "boundary"})
    with pytest.raises(UsageError, match="architecture differs.*--target"):
        train(other, data, tmp_path / "third", verbose=0, log=quiet,
              init_model=first / "model.keras")
    assert not (tmp_path / "third").exists()

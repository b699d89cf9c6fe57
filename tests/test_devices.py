"""Training on several devices (`--devices N`): here, logical CPU devices. The CPU can only be
split before TensorFlow sets up its devices, so the trainings run in fresh processes."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from conftest import disk_samples, write_paired

from nucleiseg.config import TrainConfig
from nucleiseg.errors import UsageError

# 16 images: 11 train, 5 validate; validation batches of 4 and 1, so one device gets an empty
# share of the last one. One step per epoch: each epoch's loss is one step's loss.
# --deterministic: TensorFlow's tf.data then augments batch after batch (a parallel map draws
# the augmentation's random state in whatever order its calls run).
FLAGS = ["--image-size", "64", "--batch-size", "4", "--steps-per-epoch", "1", "--epochs", "2",
         "--encoder-alpha", "0.35", "--decoder-filters", "32,16,16,8", "--warmup-steps", "0",
         "--patience", "50", "--seed", "7", "--deterministic"]


def run_cli(*args, timeout=300):
    # The same kernels for one and for two devices (logical CPU devices need oneDNN off).
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "nucleiseg", "train", *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(run):
    lines = (run / "history.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    return {key: [float(row[i]) for row in rows] for i, key in enumerate(header)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_paired(tmp_path_factory.mktemp("devices") / "data",
                        disk_samples(16, shape=(64, 64)))


@pytest.fixture(scope="module")
def two_device_run(data):
    run = data.parent / "two"
    result = run_cli("--data", data, "--out", run, "--devices", "2", *FLAGS)
    return run, result.stdout


@pytest.mark.slow
def test_training_on_two_devices_writes_a_complete_run(two_device_run):
    from nucleiseg.model.saving import load_model

    run, stdout = two_device_run
    assert "split among 2 devices (2 each)" in stdout
    config = json.loads((run / "config.json").read_text())
    assert config["devices"] == 2 and config["batch_size"] == 4
    losses = history(run)
    assert len(losses["loss"]) == 2
    assert all(math.isfinite(v) for key in ("loss", "val_loss") for v in losses[key])
    model, record = load_model(run / "model.keras")
    assert record["config"]["devices"] == 2
    assert model.output_shape[-1] == 2
    # What is saved is a plain model: no BatchNorm waits for other devices at inference.
    from nucleiseg.training.fit import batchnorm_layers

    assert not any(layer.synchronized for layer in batchnorm_layers(model))
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epochs_done"] == 2


@pytest.mark.slow
def test_two_devices_and_one_compute_the_same_steps(data, two_device_run):
    """The same global batch split between two devices (BatchNorm synchronised, gradients
    summed) gives the single-device step: the same first loss up to float rounding, and after
    one Adam update nearly the same second loss and validation loss (measured here: the first
    equal to all digits, the others within 2e-5)."""
    two, _ = two_device_run
    one = data.parent / "one"
    run_cli("--data", data, "--out", one, "--devices", "1", *FLAGS)
    assert json.loads((one / "config.json").read_text())["devices"] == 1
    single, double = history(one), history(two)
    assert double["loss"][0] == pytest.approx(single["loss"][0], rel=1e-5)
    assert double["loss"][1] == pytest.approx(single["loss"][1], rel=2e-4)
    assert double["val_loss"] == pytest.approx(single["val_loss"], rel=2e-4)


@pytest.mark.slow
def test_a_two_device_run_resumes_on_two_devices(tmp_path, two_device_run):
    run, _ = two_device_run
    # A run stopped after two of three epochs: the finished run, its config saying three.
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    (stopped / "model.keras").unlink()
    config = json.loads((stopped / "config.json").read_text())
    (stopped / "config.json").write_text(json.dumps(config | {"epochs": 3}))
    result = run_cli("--resume", stopped)
    assert "split among 2 devices" in result.stdout
    assert json.loads((stopped / "checkpoints" / "last.json").read_text())["epochs_done"] == 3
    losses = history(stopped)
    assert losses["epoch"] == [0, 1, 2] and all(math.isfinite(v) for v in losses["loss"])
    assert losses["loss"][:2] == history(run)["loss"]


def test_devices_in_the_configuration():
    assert TrainConfig().devices == 1
    older = {k: v for k, v in TrainConfig().to_dict().items() if k != "devices"}
    assert TrainConfig.from_dict(older).devices == 1  # config.json from before --devices
    assert TrainConfig.from_dict(TrainConfig(devices=2).to_dict()).devices == 2
    with pytest.raises(UsageError, match="cannot be split evenly among 4 devices"):
        TrainConfig(batch_size=6, devices=4)
    with pytest.raises(UsageError, match="devices must be at least 1"):
        TrainConfig(devices=0)


def test_cli_passes_devices_and_refuses_uneven_batches(tmp_path, capsys, monkeypatch):
    from nucleiseg.cli import build_parser, main

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)  # main sets it for N > 1

    args = build_parser().parse_args(["train", "--devices", "2"])
    assert args.devices == 2
    assert main(["train", "--data", str(tmp_path), "--devices", "3", "--batch-size", "4"]) == 2
    assert "cannot be split evenly among 3 devices" in capsys.readouterr().err


def test_multi_worker_tf_config_is_refused(monkeypatch):
    from nucleiseg.training.fit import distribution_strategy

    cluster = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]},
               "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(UsageError, match="multi-worker training is not supported"):
        distribution_strategy(1)
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster | {"cluster": {"worker": ["a:1"]}}))
    assert distribution_strategy(1) is None  # one task: nothing to refuse


def test_cpu_split_after_tensorflow_started_is_a_clear_error(monkeypatch):
    import tensorflow as tf

    from nucleiseg.training import fit as train

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("splits the CPU only without GPUs")
    found = len(tf.config.list_logical_devices("CPU"))  # TensorFlow has set up its devices
    monkeypatch.setattr(train, "check_onednn_off", lambda: None)
    with pytest.raises(UsageError, match="already set up its devices.*fresh process"):
        train.distribution_strategy(found + 1)


def test_resume_on_fewer_gpus_than_the_run_trained_on_is_refused(tmp_path, monkeypatch):
    import tensorflow as tf

    from nucleiseg.training.fit import resume

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TrainConfig(devices=2, batch_size=4).to_dict()))
    for name in ("run.json", "split.json", "checkpoints/last.json"):
        (run / name).write_text("{}")
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: [tf.config.LogicalDevice("/device:GPU:0", "GPU")])
    with pytest.raises(UsageError, match="trains on 2 devices and resumes on as many.*"
                                         "only 1 GPU device$"):
        resume(run, log=lambda *_: None)

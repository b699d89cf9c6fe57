"""Training: data -> split -> tf.data -> U-Net -> a run directory that says how it was made.

Run directory:
  config.json  run.json  split.json  model.keras  history.csv  logs/  epochs/epoch_NNN.png
  curves.png  metrics.json  checkpoints/{best.weights.h5, last.weights.h5, last.json}

checkpoints/last.* (weights, optimizer state, early-stopping state) are written atomically at the
end of every epoch, so an interrupted or killed run continues with `resume(run_dir)`.

With config.devices > 1 the model trains under a tf.distribute.MirroredStrategy
(`distribution_strategy`): each step's batch of config.batch_size images is split among the
devices, BatchNorm statistics are synchronised over the whole batch, and the gradients are summed,
so a step computes what it computes on one device, up to float rounding.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

import nucleiseg
from nucleiseg.algorithms.preprocess import image_kind, normalize_image
from nucleiseg.algorithms.scale import training_nucleus_size
from nucleiseg.config import TrainConfig
from nucleiseg.errors import DataError, Interrupted, TrainingError, UsageError
from nucleiseg.evaluation import evaluate_images, model_segmenter
from nucleiseg.io.images import bundled_sample, find_samples, load_samples
from nucleiseg.io.runfiles import atomic_write, write_json
from nucleiseg.model.keras_metrics import compile_model
from nucleiseg.model.saving import load_model, save_model
from nucleiseg.model.unet import build_unet, check_image_size
from nucleiseg.render import INSTALL_PLOTS, can_draw, pick_examples, plot_curves
from nucleiseg.training.data import (
    centre_crops,
    crop_weights,
    labels_to_classes,
    make_crop_dataset,
    make_train_dataset,
    make_val_dataset,
    name_clusters,
    prepare_arrays,
    split_names,
)
from nucleiseg.training.display import show_predictions


def new_run_dir(run_dir: Path | None) -> Path:
    """Create a fresh run directory; an existing, non-empty one is never overwritten."""
    if run_dir is None:
        run_dir = Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"{run_dir}: already exists; runs are never overwritten, "
                         "choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from None
    return run_dir


class DisplayCallback(keras.callbacks.Callback):
    """After every epoch, save input / true mask / predicted mask for fixed validation images
    to epochs/epoch_NNN.png (the original's DisplayCallback, without popping up windows)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, folder: Path):
        super().__init__()
        self.images, self.masks, self.folder = images, masks, Path(folder)
        self.folder.mkdir(exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        show_predictions(self.model, self.images, self.masks,
                         self.folder / f"epoch_{epoch + 1:03d}.png")


def distribution_strategy(devices: int):
    """None for one device; for more, a MirroredStrategy over the first `devices` GPUs or, on a
    machine without GPUs, over `devices` logical CPU devices (the same cores: no faster, for
    testing). Call before anything else in the process has used TensorFlow: logical CPU
    devices can only be made before TensorFlow sets up its devices.

    Multi-worker training (TF_CONFIG naming several tasks) is refused: Keras 3's `fit` fails
    under MultiWorkerMirroredStrategy (docs/training.md, Several machines)."""
    check_single_worker()
    if devices == 1:
        return None
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        found = tf.config.list_logical_devices("GPU")
        kind = "GPU"
    else:
        check_onednn_off()
        cpu = tf.config.list_physical_devices("CPU")[0]
        configured = tf.config.get_logical_device_configuration(cpu)
        if configured is None or len(configured) < devices:
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
            except RuntimeError:
                raise UsageError(
                    f"cannot split the CPU into {devices} devices: TensorFlow has already set "
                    "up its devices in this process (with "
                    f"{len(tf.config.list_logical_devices('CPU'))} CPU device). Train on "
                    "several devices in a fresh process (`nucleiseg train --devices N`), or "
                    "call train() before anything else uses TensorFlow") from None
        found = tf.config.list_logical_devices("CPU")
        kind = "logical CPU"
    if len(found) < devices:
        raise UsageError(f"--devices {devices}: this machine has only {len(found)} {kind} "
                         f"device{'s' if len(found) != 1 else ''}")
    return tf.distribute.MirroredStrategy([device.name for device in found[:devices]])


def check_single_worker() -> None:
    """Refuse TF_CONFIG with several tasks rather than train one copy per machine."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return
    try:
        cluster = json.loads(text).get("cluster", {})
        tasks = sum(len(members) for members in cluster.values())
    except (ValueError, AttributeError, TypeError):
        raise UsageError("TF_CONFIG is set but is not valid JSON with a cluster") from None
    if tasks > 1:
        raise UsageError(
            "TF_CONFIG names several workers, but multi-worker training is not supported: "
            "Keras 3's fit fails under tf.distribute.MultiWorkerMirroredStrategy "
            "(docs/training.md, Several machines). Unset TF_CONFIG and train on one machine "
            "with --devices N (its GPUs)")


def check_onednn_off() -> None:
    """Logical CPU devices need TensorFlow's oneDNN kernels off: with them, a convolution of
    an empty batch (a device's share of a last, small batch) returns a wrongly shaped tensor
    (TensorFlow 2.21) and training fails. The setting is read when TensorFlow is imported."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn = _pywrap_util_port.IsMklEnabled()
    except (ImportError, AttributeError):
        onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0"
    if onednn:
        raise UsageError(
            "training on several logical CPU devices needs TensorFlow's oneDNN kernels off: "
            "set TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow is imported (`nucleiseg train "
            "--devices N` does this itself)")


def batchnorm_layers(model: keras.Model):
    """Every BatchNormalization layer of `model`, inside nested models too."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from batchnorm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            yield layer


def load_training_data(data_dir: Path, skip_bad: bool, log, channel=None):
    samples, skipped = find_samples(data_dir, skip_bad=skip_bad)
    loaded, unreadable = load_samples(samples, skip_bad=skip_bad, channel=channel)
    skipped += unreadable
    if skipped:
        log(f"skipped {len(skipped)} unusable samples:")
        for name, why in skipped:
            log(f"  {name}: {why}")
    if len(loaded) < 2:
        raise DataError(f"{data_dir}: need at least 2 usable labelled images to train and "
                        f"validate, found {len(loaded)}")
    return loaded, skipped


def load_sources(data_dirs: list[Path], skip_bad: bool, log, channel=None):
    """Samples of one or more labelled folders: ({name: (image, labels)}, {name: index of its
    folder}, skipped). A name found in two folders is an error (splits and records go by name)."""
    by_name, sources, skipped = {}, {}, []
    for index, data_dir in enumerate(data_dirs):
        loaded, bad = load_training_data(data_dir, skip_bad, log, channel)
        skipped += bad
        for sample, image, labels in loaded:
            if sample.name in by_name:
                raise DataError(f"{data_dir}: image '{sample.name}' is also in "
                                f"{data_dirs[sources[sample.name]]}; rename one of them")
            by_name[sample.name] = (image, labels)
            sources[sample.name] = index
    return by_name, sources, skipped


def split_sources(names, sources: dict, kinds: dict, val_fraction: float, seed: int,
                  group_pattern: str | None = None) -> tuple[list, list]:
    """Each folder split on its own (stratified by kind, whole `group_pattern` clusters on
    one side), so adding a folder never moves another folder's images across the split."""
    clusters = name_clusters(names, group_pattern)
    train_names, val_names = [], []
    for index in sorted(set(sources.values())):
        own = [name for name in names if sources[name] == index]
        train_part, val_part = split_names(own, val_fraction, seed, kinds, clusters)
        train_names += train_part
        val_names += val_part
    return sorted(train_names), sorted(val_names)


def sampling_strata(kinds: dict, sources: dict | None) -> dict:
    """What crop sampling balances: the image kind, and with several folders the folder too
    (so a small added set, e.g. H&E of another lab, is not drowned by a large one)."""
    if not sources or len(set(sources.values())) < 2:
        return kinds
    return {name: f"{kind}@{sources[name]}" for name, kind in kinds.items()}


def make_datasets(config: TrainConfig, by_name: dict, kinds: dict, train_names, val_names,
                  seed: int | None = None, sources: dict | None = None):
    """Training dataset (endless), steps per epoch, and validation arrays (x, y).

    'resize': whole images resized to image_size. 'crops': random native-resolution crops of
    image_size, rare kinds drawn more often; validation on one centre crop per image.
    `seed` (default config.seed) drives shuffling, crops and augmentation.
    """
    seed = config.seed if seed is None else seed
    if config.sampling == "resize":
        def arrays(names):
            return prepare_arrays([by_name[n][0] for n in names], [by_name[n][1] for n in names],
                                  config.image_size, config.target)

        x_train, y_train = arrays(train_names)
        train_ds, steps = make_train_dataset(x_train, y_train, config.batch_size, seed,
                                             config.augment)
        validation = arrays(val_names)
    else:
        def normalised(names):
            return [normalize_image(by_name[n][0]) for n in names]

        train_images = normalised(train_names)
        shares = config.data_shares if sources else None
        weights = crop_weights([im.shape[:2] for im in train_images],
                               [kinds[n] for n in train_names], config.image_size,
                               sources=[sources[n] for n in train_names] if shares else None,
                               shares=shares)
        train_ds = make_crop_dataset(
            train_images, [by_name[n][1] for n in train_names], config.image_size,
            config.batch_size, seed, config.augment, weights, target=config.target,
            zoom=config.zoom_augment, intensity=config.intensity_augment,
            stain=config.stain_augment, blur_noise=config.blur_noise_augment,
            he_render=config.he_render_augment,
            contact_weight=config.contact_weight, pale_weight=config.pale_weight)
        steps = max(1, round(sum(im.shape[0] * im.shape[1] for im in train_images)
                             / config.image_size**2 / config.batch_size))
        validation = centre_crops(
            normalised(val_names),
            [labels_to_classes(by_name[n][1], config.target) for n in val_names],
            config.image_size)
    return train_ds, config.steps_per_epoch or steps, validation


class EarlyStoppingFrom(keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from a saved state (best value, epochs without improvement),
    so a resumed run stops exactly when the uninterrupted one would have."""

    def __init__(self, state: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.state = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.state.get("best") is not None:
            self.best = self.state["best"]
            self.wait = self.state["wait"]
            self.best_epoch = self.state["best_epoch"] - 1


class EpochBackup(keras.callbacks.Callback):
    """At the end of every epoch with a finite loss, write the weights with the optimizer state
    (last.weights.h5) and the epoch and early-stopping state (last.json), each atomically."""

    def __init__(self, folder: Path, early_stopping: EarlyStoppingFrom, seconds_before=0.0):
        super().__init__()
        self.folder, self.early_stopping = Path(folder), early_stopping
        self.seconds_before, self.started = seconds_before, time.perf_counter()
        self.nan_epoch = None

    def seconds(self) -> float:
        """Training time of the whole run, earlier sessions included."""
        return self.seconds_before + time.perf_counter() - self.started

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", math.nan))):
            self.nan_epoch = epoch + 1
            return
        weights = self.folder / "last.weights.h5"
        partial = self.folder / "last.partial.weights.h5"
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, weights)
        stopper = self.early_stopping
        best = None if stopper.best is None else float(stopper.best)
        write_json(self.folder / "last.json", {
            "epochs_done": epoch + 1, "best": best if best is None or math.isfinite(best) else None,
            "best_epoch": stopper.best_epoch + 1, "wait": stopper.wait,
            "seconds": round(self.seconds(), 1)})


class TimeBudget(keras.callbacks.Callback):
    """Stop when the next epoch would end past `minutes` of training, counted by the run's
    EpochBackup (earlier sessions of a resumed run included); ends after at least one epoch."""

    def __init__(self, minutes: float, backup: EpochBackup, epochs_before: int = 0):
        super().__init__()
        self.seconds, self.backup = minutes * 60, backup
        self.epochs_before, self.stopped_at = epochs_before, None
        self.started = backup.seconds()

    def on_epoch_end(self, epoch, logs=None):
        spent = self.backup.seconds()
        per_epoch = (spent - self.started) / (epoch + 1 - self.epochs_before)
        if spent + per_epoch > self.seconds:
            self.model.stop_training = True
            self.stopped_at = epoch + 1


def truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the header and the first `epochs_done` rows of history.csv (a killed run may have
    logged an epoch whose backup it never wrote)."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        text = "".join(lines[:1 + epochs_done])
        atomic_write(path, lambda tmp: tmp.write_text(text))


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv as {column: values}, over all epochs of the run, resumed or not."""
    lines = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    return {key: [float(row[i]) for row in rows] for i, key in enumerate(header) if key != "epoch"}


def train(config: TrainConfig, data_dir: Path | list[Path] | None = None,
          run_dir: Path | None = None, skip_bad: bool = False, verbose="auto", log=print,
          command: str | None = None, init_model: Path | None = None,
          channel: int | str | None = None, group_pattern: str | None = None
          ) -> tuple[Path, dict]:
    """Train a U-Net as configured; returns (run directory, the model's record).

    `data_dir` is one labelled folder or a list of them (each split on its own);
    `group_pattern` (a regular expression, e.g. '^[^_]+' for a patient prefix) keeps the images
    whose names share its match on one side of the split. `command` (the command line that
    asked for this run) is kept in the record; `init_model` (a saved model of the same
    architecture) gives the starting weights, for fine-tuning; `channel` (index or OME name)
    picks the nuclear channel of multi-channel images.
    """
    check_image_size(config.image_size)
    strategy = distribution_strategy(config.devices)  # before anything else uses TensorFlow
    if data_dir is None:
        data_dirs = [bundled_sample("train")]
    elif isinstance(data_dir, (list, tuple)):
        data_dirs = [Path(d) for d in data_dir]
    else:
        data_dirs = [Path(data_dir)]
    if config.data_shares is not None and len(config.data_shares) != len(data_dirs):
        raise UsageError(f"{len(config.data_shares)} data shares for {len(data_dirs)} --data "
                         "folders: give one share per folder")
    initial, origin = (initial_weights(init_model, config) if init_model is not None
                       else (None, None))
    by_name, sources, skipped = load_sources(data_dirs, skip_bad, log, channel)
    run_dir = new_run_dir(run_dir)
    write_json(run_dir / "config.json", config.to_dict())
    data = str(data_dirs[0]) if len(data_dirs) == 1 else [str(d) for d in data_dirs]
    write_json(run_dir / "run.json", {
        "data": data, "skip_bad": skip_bad, "channel": channel, "command": command,
        "init_model": origin, "group_pattern": group_pattern,
        "nucleiseg_version": nucleiseg.__version__,
        "created": dt.datetime.now().isoformat(timespec="seconds")})

    kinds = {name: image_kind(image) for name, (image, _) in by_name.items()}
    train_names, val_names = split_sources(sorted(by_name), sources, kinds, config.val_fraction,
                                           config.seed, group_pattern)
    split = {"seed": config.seed, "val_fraction": config.val_fraction, "stratified_by": "kind",
             "grouped_by": group_pattern, "train": train_names, "val": val_names,
             "kinds": kinds, "sources": sources if len(data_dirs) > 1 else None,
             "skipped": [f"{name}: {why}" for name, why in skipped]}
    write_json(run_dir / "split.json", split)
    where = ", ".join(str(d) for d in data_dirs)
    log(f"{len(train_names)} training and {len(val_names)} validation images from {where}")
    (run_dir / "checkpoints").mkdir()
    return fit_run(run_dir, config, by_name, kinds, train_names, val_names, verbose, log,
                   initial_weights=initial, strategy=strategy, sources=split["sources"])


def resume(run_dir: Path, verbose="auto", log=print) -> tuple[Path, dict]:
    """Continue an interrupted run from its last completed epoch, with the same configuration,
    data and split, weights, optimizer state (so the learning-rate schedule goes on) and
    early-stopping state. Crops and augmentations are drawn afresh from seed + epochs done."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"{run_dir}: not a training run directory (no config.json)")
    if (run_dir / "model.keras").exists():
        raise UsageError(f"{run_dir}: this run has finished (model.keras exists); "
                         "nothing to resume")
    try:
        config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        run = json.loads((run_dir / "run.json").read_text())
        split = json.loads((run_dir / "split.json").read_text())
        state = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    except FileNotFoundError as exc:
        raise UsageError(f"{run_dir}: cannot resume, {Path(exc.filename).name} is missing "
                         "(the run stopped before its first epoch ended: start it again)") from None
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise DataError(f"{run_dir}: cannot resume, a run file is damaged ({exc})") from None
    try:
        strategy = distribution_strategy(config.devices)
    except UsageError as exc:
        raise UsageError(f"{run_dir}: this run trains on {config.devices} devices and resumes "
                         f"on as many; {exc}") from None
    data_dirs = [Path(d) for d in
                 (run["data"] if isinstance(run["data"], list) else [run["data"]])]
    by_name, _, _ = load_sources(data_dirs, run.get("skip_bad", False), log, run.get("channel"))
    missing = sorted(set(split["train"] + split["val"]) - set(by_name))
    if missing:
        where = ", ".join(str(d) for d in data_dirs)
        raise DataError(f"{where}: {len(missing)} images of the run's split are gone "
                        f"(first: {missing[0]}); cannot resume on other data")
    log(f"resuming {run_dir} after epoch {state['epochs_done']} of {config.epochs}")
    return fit_run(run_dir, config, by_name, split["kinds"], split["train"], split["val"],
                   verbose, log, state=state, strategy=strategy, sources=split.get("sources"))


# A fine-tuned model predicts as its starting model did unless told otherwise: the same tuned
# post-processing and the same nucleus size for --diameter auto (the fine-tune's few images
# would move the size every other image is resized to).
INHERITED = ("postprocessing", "nucleus_size", "stain_reference")


def initial_weights(path: Path, config: TrainConfig) -> tuple[list, dict]:
    """Weights of a saved model, checked to fit the architecture `config` builds, and where
    they came from (path, the command that trained them, and its own starting model), so a
    fine-tuned model's record holds its whole recipe."""
    source, record = load_model(path)
    expected = build_model(config)
    shapes = [tuple(w.shape) for w in source.weights]
    if shapes != [tuple(w.shape) for w in expected.weights]:
        theirs = record.get("config", {})
        raise UsageError(
            f"{path}: its architecture differs from this run's (it has target "
            f"{theirs.get('target')!r}, decoder filters {theirs.get('decoder_filters')}, "
            f"encoder alpha {theirs.get('encoder_alpha')}); use the same --target, "
            "--decoder-filters and --encoder-alpha to start from it")
    origin = {"path": str(path), "command": record.get("command"),
              "init_model": record.get("init_model"),
              # what a fine-tuned model keeps of its starting model's record
              **{key: record[key] for key in INHERITED if key in record}}
    return source.get_weights(), origin


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Python, NumPy and backend seeds; with `deterministic`, TensorFlow's deterministic ops
    too, so the same seed gives the same weights on the same CPU (opt-in: some GPU kernels
    have no deterministic version)."""
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def build_model(config: TrainConfig, decay_steps: int | None = None,
                strategy=None) -> keras.Model:
    """The compiled U-Net; with a `strategy`, its variables are made in the strategy's scope
    and BatchNorm computes its batch statistics over all devices' images together."""
    if strategy is not None:
        with strategy.scope():
            model = build_model(config, decay_steps)
        for layer in batchnorm_layers(model):
            layer.synchronized = True
        return model
    model = build_unet(
        num_classes=config.num_classes, encoder_weights=config.encoder_weights,
        freeze_encoder=config.freeze_encoder, encoder_alpha=config.encoder_alpha,
        decoder_filters=config.decoder_filters, dropout=config.dropout,
        bn_momentum=config.bn_momentum,
    )
    if config.freeze_batchnorm:  # Keras runs a BatchNorm layer that is not trainable in
        for layer in batchnorm_layers(model):  # inference mode: its statistics stay
            layer.trainable = False
    return compile_model(model, config.learning_rate, config.boundary_weight,
                         decay_steps=decay_steps)


def build_without_peeking(model: keras.Model, strategy, element_spec) -> None:
    """Under a distribution strategy, Keras' fit first draws a batch from a fresh pass over the
    training data only to learn its shapes (the TensorFlow trainer's _maybe_symbolic_build);
    that pass moves the seeded shuffle and the augmentation's random state on (by as many
    batches as were prefetched), so the run would train on other batches than on one device,
    and not repeatably. Build from the data's shapes (`element_spec`) instead."""
    if not (hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build")):
        return  # another Keras: it builds as it does

    def symbolic_build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec)

    model._maybe_symbolic_build = symbolic_build


def single_device_copy(model: keras.Model, config: TrainConfig,
                       decay_steps: int | None = None) -> keras.Model:
    """The same model, weights and optimizer state outside any distribution strategy: what is
    evaluated and saved after training on several devices (Keras' predict_on_batch under a
    MirroredStrategy gives every device the whole batch and returns each one's outputs)."""
    copy = build_model(config, decay_steps)
    copy.set_weights(model.get_weights())
    copy.optimizer.build(copy.trainable_variables)
    for target, source in zip(copy.optimizer.variables, model.optimizer.variables, strict=True):
        target.assign(source.numpy())
    return copy


def fit_run(run_dir: Path, config: TrainConfig, by_name: dict, kinds: dict, train_names,
            val_names, verbose, log, state: dict | None = None,
            initial_weights: list | None = None, strategy=None,
            sources: dict | None = None) -> tuple[Path, dict]:
    """Fit (from scratch, from `initial_weights`, or from a resume `state`), then evaluate and
    save the model with its record. With a `strategy` (distribution_strategy(config.devices)),
    the model trains on its devices; the saved model is a plain single-device one."""
    epochs_done = state["epochs_done"] if state else 0
    # A resumed run draws new crops and augmentations rather than replaying epoch 1's.
    seed_everything(config.seed + epochs_done, config.deterministic)
    train_ds, steps, (x_val, y_val) = make_datasets(
        config, by_name, sampling_strata(kinds, sources), train_names, val_names,
        seed=config.seed + epochs_done, sources=sources)
    split = (f", split among {config.devices} devices ({config.batch_size // config.devices} "
             "each)" if strategy is not None else "")
    log(f"{steps} steps of {config.batch_size} per epoch{split}")
    val_ds = make_val_dataset(x_val, y_val, config.batch_size)
    decay_steps = config.epochs * steps if config.lr_schedule == "cosine" else None
    model = build_model(config, decay_steps, strategy)
    if strategy is not None:
        build_without_peeking(model, strategy, train_ds.element_spec)
    checkpoints = run_dir / "checkpoints"
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        # Built here, eagerly: built inside the first traced train step, its ~300 variables
        # took ~9 s to create and made TensorFlow trace the step twice (~30 s before epoch 1)
        model.optimizer.build(model.trainable_variables)
        if state:
            model.load_weights(checkpoints / "last.weights.h5")
            truncate_history(run_dir / "history.csv", epochs_done)
        elif initial_weights is not None:
            model.set_weights(initial_weights)

    drawing = can_draw()
    if not drawing:
        log(f"matplotlib is not installed: no epochs/*.png or curves.png ({INSTALL_PLOTS})")
    shown = pick_examples([kinds[name] for name in val_names])
    best_weights = checkpoints / "best.weights.h5"
    monitor = config.early_stopping_monitor
    early_stopping = EarlyStoppingFrom(
        state, monitor=monitor, patience=config.early_stopping_patience,
        restore_best_weights=False,
        start_from_epoch=math.ceil(config.early_stopping_warmup_steps / steps))
    backup = EpochBackup(checkpoints, early_stopping, (state or {}).get("seconds", 0.0))
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            best_weights, monitor=monitor, save_best_only=True, save_weights_only=True,
            initial_value_threshold=state.get("best") if state else None),
        early_stopping,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(run_dir / "history.csv", append=bool(state)),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
        *([DisplayCallback(x_val[shown], y_val[shown], run_dir / "epochs")] if drawing else []),
        backup,
    ]
    budget = (TimeBudget(config.minutes, backup, epochs_done) if config.minutes is not None
              else None)
    if budget is not None:
        callbacks.append(budget)
    try:
        model.fit(train_ds, steps_per_epoch=steps, epochs=config.epochs,
                  initial_epoch=epochs_done, validation_data=val_ds, callbacks=callbacks,
                  shuffle=False, verbose=verbose)
    except KeyboardInterrupt:
        last = checkpoints / "last.json"
        done = json.loads(last.read_text())["epochs_done"] if last.exists() else 0
        if not done:
            raise Interrupted(f"{run_dir}: interrupted before the first epoch ended; "
                              "nothing to resume, start again") from None
        raise Interrupted(f"{run_dir}: interrupted after epoch {done} of {config.epochs}; "
                          f"continue with: nucleiseg train --resume {run_dir}") from None
    seconds = backup.seconds()
    if backup.nan_epoch is not None and not best_weights.exists():
        raise TrainingError(
            f"{run_dir}: the loss became NaN in epoch {backup.nan_epoch}, before any epoch "
            "finished; no model was saved. Try a lower --learning-rate")
    model.load_weights(best_weights)  # the best epoch, also when early stopping never fired
    if strategy is not None:
        model = single_device_copy(model, config, decay_steps)

    history = read_history(run_dir / "history.csv")
    best_epoch = int(np.nanargmin(history[monitor]) if monitor == "val_loss"
                     else np.nanargmax(history[monitor])) + 1
    at_input_size = {k: float(v) for k, v in
                     model.evaluate(val_ds, return_dict=True, verbose=0).items()}
    native_report, _ = evaluate_images(model_segmenter(model, config.to_dict()),
                                       [by_name[n][0] for n in val_names],
                                       [by_name[n][1] for n in val_names], val_names,
                                       config.target)
    metrics = {
        "validation_at_input_size": at_input_size,
        "validation_native": native_report,
        "epochs_run": len(history["loss"]),
        "best_epoch": best_epoch,
        "training_seconds": round(seconds, 1),
    }
    if backup.nan_epoch is not None:
        metrics["stopped"] = f"loss became NaN in epoch {backup.nan_epoch}"
    elif budget is not None and budget.stopped_at is not None:
        metrics["stopped"] = (f"time budget of {config.minutes:g} minutes reached after epoch "
                              f"{budget.stopped_at}")
    write_json(run_dir / "metrics.json", metrics)
    if drawing:
        plot_curves(history, run_dir / "curves.png")
    run = json.loads((run_dir / "run.json").read_text())
    record = {
        "nucleiseg_version": nucleiseg.__version__,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": run["command"],
        "init_model": run.get("init_model"),
        "config": config.to_dict(),
        "data": run["data"],
        "split": {"train": list(train_names), "val": list(val_names)},
        # what --diameter auto resizes images to
        "nucleus_size": training_nucleus_size([by_name[n][1] for n in train_names]),
        "metrics": {k: v for k, v in metrics.items() if k != "validation_native"}
        | {"validation_native": {k: v for k, v in native_report.items() if k != "per_image"}},
    }
    origin = run.get("init_model")
    if origin:  # the inherited values once, at the top of the record
        record["init_model"] = {k: v for k, v in origin.items() if k not in INHERITED}
        record.update({key: origin[key] for key in INHERITED if key in origin})
    save_model(model, run_dir / "model.keras", record)
    log(f"run saved to {run_dir}")
    if backup.nan_epoch is not None:
        raise TrainingError(
            f"the loss became NaN in epoch {backup.nan_epoch}; training stopped and the best "
            f"model (epoch {best_epoch}) was saved to {run_dir / 'model.keras'}. "
            "Try a lower --learning-rate")
    return run_dir, record

"""Training: data -> split -> tf.data -> U-Net -> a run directory that says how it was made.

Run directory:
  config.json  split.json  model.keras  checkpoints/best.weights.h5  history.csv  logs/
  epochs/epoch_NNN.png  curves.png  metrics.json
"""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

import keras
import numpy as np

import nucleiseg
from nucleiseg.config import TrainConfig, write_json
from nucleiseg.data import (centre_crops, crop_weights, labels_to_classes, make_crop_dataset,
                            make_train_dataset, make_val_dataset, prepare_arrays, split_names)
from nucleiseg.errors import DataError, UsageError
from nucleiseg.evaluate import evaluate_images, model_segmenter
from nucleiseg.infer import show_predictions
from nucleiseg.io import bundled_sample, find_samples, load_samples
from nucleiseg.keras_metrics import compile_model
from nucleiseg.model import build_unet, check_image_size
from nucleiseg.preprocess import image_kind, normalize_image
from nucleiseg.saving import save_model
from nucleiseg.viz import pick_examples, plot_curves


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


def load_training_data(data_dir: Path, skip_bad: bool, log):
    samples, skipped = find_samples(data_dir, skip_bad=skip_bad)
    loaded, unreadable = load_samples(samples, skip_bad=skip_bad)
    skipped += unreadable
    if skipped:
        log(f"skipped {len(skipped)} unusable samples:")
        for name, why in skipped:
            log(f"  {name}: {why}")
    if len(loaded) < 2:
        raise DataError(f"{data_dir}: need at least 2 usable labelled images to train and "
                        f"validate, found {len(loaded)}")
    return loaded, skipped


def make_datasets(config: TrainConfig, by_name: dict, kinds: dict, train_names, val_names):
    """Training dataset (endless), steps per epoch, and validation arrays (x, y).

    'resize': whole images resized to image_size. 'crops': random native-resolution crops of
    image_size, rare kinds drawn more often; validation on one centre crop per image.
    """
    if config.sampling == "resize":
        def arrays(names):
            return prepare_arrays([by_name[n][0] for n in names], [by_name[n][1] for n in names],
                                  config.image_size, config.target)

        x_train, y_train = arrays(train_names)
        train_ds, steps = make_train_dataset(x_train, y_train, config.batch_size, config.seed,
                                             config.augment)
        validation = arrays(val_names)
    else:
        def native(names):
            return ([normalize_image(by_name[n][0]) for n in names],
                    [labels_to_classes(by_name[n][1], config.target) for n in names])

        train_images, train_targets = native(train_names)
        weights = crop_weights([im.shape[:2] for im in train_images],
                               [kinds[n] for n in train_names], config.image_size)
        train_ds = make_crop_dataset(train_images, train_targets, config.image_size,
                                     config.batch_size, config.seed, config.augment, weights)
        steps = max(1, round(sum(im.shape[0] * im.shape[1] for im in train_images)
                             / config.image_size**2 / config.batch_size))
        validation = centre_crops(*native(val_names), config.image_size)
    return train_ds, config.steps_per_epoch or steps, validation


def train(config: TrainConfig, data_dir: Path | None = None, run_dir: Path | None = None,
          skip_bad: bool = False, verbose="auto", log=print,
          command: str | None = None) -> tuple[Path, dict]:
    """Train a U-Net as configured; returns (run directory, the model's record).
    `command` (the command line that asked for this run) is kept in the record."""
    check_image_size(config.image_size)
    data_dir = Path(data_dir) if data_dir is not None else bundled_sample("train")
    loaded, skipped = load_training_data(data_dir, skip_bad, log)
    run_dir = new_run_dir(run_dir)
    write_json(run_dir / "config.json", config.to_dict())
    keras.utils.set_random_seed(config.seed)

    by_name = {sample.name: (image, labels) for sample, image, labels in loaded}
    kinds = {name: image_kind(image) for name, (image, _) in by_name.items()}
    train_names, val_names = split_names(by_name, config.val_fraction, config.seed, kinds)
    split = {"seed": config.seed, "val_fraction": config.val_fraction, "stratified_by": "kind",
             "train": train_names, "val": val_names, "kinds": kinds,
             "skipped": [f"{name}: {why}" for name, why in skipped]}
    write_json(run_dir / "split.json", split)
    log(f"{len(train_names)} training and {len(val_names)} validation images from {data_dir}")

    train_ds, steps, (x_val, y_val) = make_datasets(config, by_name, kinds, train_names,
                                                    val_names)
    log(f"{steps} steps of {config.batch_size} per epoch")

    val_ds = make_val_dataset(x_val, y_val, config.batch_size)
    model = compile_model(build_unet(
        num_classes=config.num_classes, encoder_weights=config.encoder_weights,
        freeze_encoder=config.freeze_encoder, encoder_alpha=config.encoder_alpha,
        decoder_filters=config.decoder_filters, dropout=config.dropout,
        bn_momentum=config.bn_momentum,
    ), config.learning_rate, config.boundary_weight,
        decay_steps=config.epochs * steps if config.lr_schedule == "cosine" else None)
    shown = pick_examples([kinds[name] for name in val_names])
    best_weights = run_dir / "checkpoints" / "best.weights.h5"
    best_weights.parent.mkdir()
    monitor = config.early_stopping_monitor
    callbacks = [
        keras.callbacks.ModelCheckpoint(best_weights, monitor=monitor, save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=config.early_stopping_patience, restore_best_weights=True,
            start_from_epoch=math.ceil(config.early_stopping_warmup_steps / steps)),
        keras.callbacks.CSVLogger(run_dir / "history.csv"),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs")),
        DisplayCallback(x_val[shown], y_val[shown], run_dir / "epochs"),
    ]
    started = time.perf_counter()
    history = model.fit(train_ds, steps_per_epoch=steps, epochs=config.epochs,
                        validation_data=val_ds, callbacks=callbacks, shuffle=False,
                        verbose=verbose)
    seconds = time.perf_counter() - started
    model.load_weights(best_weights)  # the best epoch, also when early stopping never fired

    history = {key: [float(v) for v in values] for key, values in history.history.items()}
    best_epoch = int(np.argmin(history[monitor]) if monitor == "val_loss"
                     else np.argmax(history[monitor])) + 1
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
    write_json(run_dir / "metrics.json", metrics)
    plot_curves(history, run_dir / "curves.png")
    record = {
        "nucleiseg_version": nucleiseg.__version__,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "config": config.to_dict(),
        "data": str(data_dir),
        "split": {"train": train_names, "val": val_names},
        "metrics": {k: v for k, v in metrics.items() if k != "validation_native"}
        | {"validation_native": {k: v for k, v in native_report.items() if k != "per_image"}},
    }
    save_model(model, run_dir / "model.keras", record)
    log(f"run saved to {run_dir}")
    return run_dir, record

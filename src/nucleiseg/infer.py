"""Prediction: normalise, predict class probabilities at the image's own size (tiles or a
resize, by how the model was trained), separate the nuclei, write the outputs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from nucleiseg.errors import DataError, UsageError
from nucleiseg.instances import (InstanceOptions, instance_options_from,
                                 labels_from_probabilities)
from nucleiseg.io import find_images, read_image, write_png, write_tiff
from nucleiseg.preprocess import normalize_image, resize_image


def create_mask(logits: np.ndarray) -> np.ndarray:
    """Per-pixel class = argmax over the last (class) axis (the original's `create_mask`)."""
    return np.argmax(logits, axis=-1).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_logits(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Logits for a stack of model-ready images (N, S, S, 3), in inference mode."""
    outputs = [
        np.asarray(model(images[start:start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How to predict: tile size and overlap (native-resolution models), input scale, TTA."""

    tile: int = 512
    overlap: int = 64
    scale: float = 1.0
    tta: int = 1  # 1 (none), 4 (flips) or 8 (flips and 90-degree rotations)
    batch_size: int = 4


def probability_function(model, tta: int = 1):
    """(N, t, t, 3) normalised tiles -> (N, t, t, C) softmax probabilities, inference mode."""
    from nucleiseg.tiling import with_test_time_augmentation

    def predict_batch(tiles):
        return softmax(np.asarray(model(tiles, training=False), dtype=np.float32))

    return predict_batch if tta == 1 else with_test_time_augmentation(predict_batch, tta)


def predict_probabilities(model, image: np.ndarray, config: dict,
                          options: PredictOptions | None = None) -> np.ndarray:
    """Class probabilities (H, W, C) at the image's own size.

    A model trained on resized whole images ('resize' sampling) sees the image resized to its
    training size; a model trained on native-resolution crops predicts in overlapping tiles.
    `options.scale` resizes the input first (e.g. 0.5 for nuclei twice the training size).
    """
    return probabilities_of_normalised(model, normalize_image(image), config, options)


def probabilities_of_normalised(model, normalised: np.ndarray, config: dict,
                                options: PredictOptions | None = None) -> np.ndarray:
    """predict_probabilities for an image already through normalize_image."""
    from nucleiseg.tiling import predict_tiled

    options = options or PredictOptions()
    predict_batch = probability_function(model, options.tta)
    native_shape = normalised.shape[:2]
    if options.scale != 1.0:
        shape = tuple(max(1, round(n * options.scale)) for n in native_shape)
        normalised = resize_image(normalised, shape)
    if config.get("sampling", "resize") == "resize":
        size = int(config["image_size"])
        small = resize_image(normalised, (size, size))[None]
        probabilities = resize_image(predict_batch(small)[0], normalised.shape[:2])
    else:
        num_classes = int(model.output_shape[-1])
        probabilities = predict_tiled(predict_batch, normalised, num_classes, options.tile,
                                      options.overlap, options.batch_size)
    if options.scale != 1.0:
        probabilities = resize_image(probabilities, native_shape)
    return probabilities


def show_predictions(model, images: np.ndarray, masks: np.ndarray, path: Path) -> None:
    """Predict model-ready images and draw input / true mask / predicted mask rows to `path`
    (the original's `show_predictions`, to a file instead of a window)."""
    from nucleiseg.viz import prediction_grid

    prediction_grid(images, masks, create_mask(predict_logits(model, images)), path)


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    image: Path
    nuclei: int = 0
    mean_area: float = 0.0
    seconds: float = 0.0
    error: str | None = None


RUN_OUTPUTS = ("measurements.csv", "summary.csv")


def output_paths(image_path: Path, out_dir: Path) -> dict[str, Path]:
    stem = Path(image_path).stem
    return {"labels": out_dir / f"{stem}_labels.tif", "mask": out_dir / f"{stem}_mask.png",
            "overlay": out_dir / f"{stem}_overlay.png"}


def write_csv(path: Path, rows: list[dict], columns) -> None:
    import csv

    from nucleiseg.io import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def segment_image(model, image: np.ndarray, config: dict,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None) -> np.ndarray:
    """Raw image -> int32 label image of separated nuclei (0 = background)."""
    probabilities = predict_probabilities(model, image, config, options)
    return labels_from_probabilities(probabilities, instance_options)


def predict_files(model, record: dict, inputs, out_dir: Path, overwrite: bool = False,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None, progress=print):
    """Segment every image in `inputs`. Per image: <stem>_labels.tif (uint16, 1..N = nuclei),
    <stem>_mask.png (0/255) and <stem>_overlay.png (outlines), at the image's own size; for the
    run: measurements.csv (one row per nucleus) and summary.csv (one row per image).

    A file that cannot be read is reported and skipped; the others are still processed.
    Without `instance_options`, the model's tuned post-processing (from its record) is used.
    Returns a list of PredictionResult.
    """
    from nucleiseg.instances import COLUMNS, measure_nuclei
    from nucleiseg.viz import overlay

    images = find_images(inputs)
    instance_options = instance_options or instance_options_from(record)
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise UsageError(f"two inputs would write the same outputs: {stems[path.stem]} and "
                             f"{path} (both named {path.stem!r})")
        stems[path.stem] = path
    out_dir = Path(out_dir)
    if not overwrite:
        planned = [p for image in images for p in output_paths(image, out_dir).values()]
        existing = [p for p in planned + [out_dir / name for name in RUN_OUTPUTS] if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]}: output exists ({len(existing)} in all); "
                             "pass --overwrite to replace outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    results, measurements = [], []
    for index, path in enumerate(images, start=1):
        start = time.perf_counter()
        try:
            image = read_image(path)
            normalised = normalize_image(image)  # once: for the model and for the overlay
            labels = labels_from_probabilities(
                probabilities_of_normalised(model, normalised, record["config"], options),
                instance_options)
            if labels.max() > np.iinfo(np.uint16).max:
                raise DataError(f"{path}: {labels.max()} nuclei found, more than a 16-bit label "
                                "image can hold; split the image into smaller pieces")
        except DataError as error:
            results.append(PredictionResult(path, error=str(error)))
            progress(f"[{index}/{len(images)}] skipped: {error}")
            continue
        paths = output_paths(path, out_dir)
        write_tiff(paths["labels"], labels.astype(np.uint16))
        write_png(paths["mask"], ((labels > 0) * 255).astype(np.uint8))
        write_png(paths["overlay"], overlay(normalised, labels))
        rows = measure_nuclei(labels, image)
        measurements += [{"image": path.name, **row} for row in rows]
        mean_area = float(np.mean([row["area"] for row in rows])) if rows else 0.0
        results.append(PredictionResult(path, len(rows), mean_area, time.perf_counter() - start))
        progress(f"[{index}/{len(images)}] {path.name}: {len(rows)} nuclei")
    write_csv(out_dir / "measurements.csv", measurements, ("image", *COLUMNS))
    write_csv(out_dir / "summary.csv",
              [{"image": r.image.name, "nuclei": r.nuclei, "mean_area": round(r.mean_area, 2),
                "seconds": round(r.seconds, 3), "error": r.error or ""} for r in results],
              ("image", "nuclei", "mean_area", "seconds", "error"))
    return results

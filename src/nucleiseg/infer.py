"""Prediction: normalise, predict class probabilities at the image's own size (tiles or a
resize, by how the model was trained), separate the nuclei, write the outputs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from nucleiseg.errors import DataError, UsageError
from nucleiseg.instances import InstanceOptions, instance_options_from, labels_from_probabilities
from nucleiseg.io import CsvStream, find_images, read_image, write_png, write_tiff
from nucleiseg.preprocess import (
    apply_intensity_range,
    intensity_range,
    normalize_image,
    resize_image,
)


def create_mask(logits: np.ndarray) -> np.ndarray:
    """Per-pixel class = argmax over the last (class) axis (the original's `create_mask`)."""
    return np.argmax(logits, axis=-1).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32, with as few temporaries as possible."""
    out = np.array(logits, dtype=np.float32, copy=True)
    out -= out.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


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
    batch_size: int = 1  # tiles per model call: larger is no faster on CPU, and needs more memory


def probability_function(model, tta: int = 1):
    """(N, t, t, 3) normalised tiles -> (N, t, t, C) softmax probabilities, inference mode.
    `model`: a Keras model or an Engine (nucleiseg.engines)."""
    from nucleiseg.engines import as_engine
    from nucleiseg.tiling import with_test_time_augmentation

    engine = as_engine(model)

    def predict_batch(tiles):
        return softmax(np.asarray(engine.predict_logits(tiles), dtype=np.float32))

    return predict_batch if tta == 1 else with_test_time_augmentation(predict_batch, tta)


def predict_probabilities(model, image: np.ndarray, config: dict,
                          options: PredictOptions | None = None,
                          intensity: tuple[float, float] | None = None) -> np.ndarray:
    """Class probabilities (H, W, C) at the image's own size.

    A model trained on resized whole images ('resize' sampling) sees the image resized to its
    training size; a model trained on native-resolution crops predicts in overlapping tiles.
    `options.scale` resizes the input first (e.g. 0.5 for nuclei twice the training size).
    `intensity`: the intensity_range to normalise with (a block of a huge image: the whole
    image's), else the image's own.
    """
    from nucleiseg.engines import as_engine
    from nucleiseg.tiling import predict_tiled

    options = options or PredictOptions()
    predict_batch = probability_function(model, options.tta)
    normalised = (normalize_image(image) if intensity is None
                  else apply_intensity_range(image, *intensity))
    native_shape = normalised.shape[:2]
    if options.scale != 1.0:
        shape = tuple(max(1, round(n * options.scale)) for n in native_shape)
        normalised = resize_image(normalised, shape)
    if config.get("sampling", "resize") == "resize":
        size = int(config["image_size"])
        small = resize_image(normalised, (size, size))[None]
        probabilities = resize_image(predict_batch(small)[0], normalised.shape[:2])
    else:
        num_classes = as_engine(model).num_classes
        probabilities = predict_tiled(predict_batch, normalised, num_classes, options.tile,
                                      options.overlap, options.batch_size)
    if options.scale != 1.0:
        probabilities = resize_image(probabilities, native_shape)
    return probabilities


def predict_quantised(model, image: np.ndarray, config: dict,
                      options: PredictOptions | None = None,
                      intensity: tuple[float, float] | None = None) -> np.ndarray:
    """predict_probabilities as uint8 (0..255), in bounded memory for native-resolution models:
    tiles are normalised one by one with the image's intensity range, and the blended
    probabilities are stored quantised. What `predict` and `segment_image` use. `intensity`:
    the image's intensity_range, when the caller has it already."""
    from nucleiseg.engines import as_engine
    from nucleiseg.instances import quantise_probabilities
    from nucleiseg.tiling import predict_tiled

    model = as_engine(model)
    options = options or PredictOptions()
    if config.get("sampling", "resize") == "resize" or options.scale != 1.0:
        return quantise_probabilities(predict_probabilities(model, image, config, options,
                                                            intensity))
    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    low, high = intensity if intensity is not None else intensity_range(image)
    return predict_tiled(probability_function(model, options.tta), image,
                         model.num_classes, options.tile, options.overlap,
                         options.batch_size,
                         prepare=lambda crop: apply_intensity_range(crop, low, high),
                         dtype=np.uint8)


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
    resumed: bool = False  # outputs were already there (--resume)


RUN_OUTPUTS = ("measurements.csv", "summary.csv")
SUMMARY_COLUMNS = ("image", "nuclei", "mean_area", "seconds", "error")


def output_paths(image_path: Path, out_dir: Path) -> dict[str, Path]:
    from nucleiseg.blocks import is_zarr_image, zarr_labels_path

    stem = Path(image_path).stem
    if is_zarr_image(image_path):  # OME-Zarr: labels/nuclei inside it, beside the image
        stem = stem.removesuffix(".ome")
        return {"labels": zarr_labels_path(image_path), "mask": out_dir / f"{stem}_mask.png",
                "overlay": out_dir / f"{stem}_overlay.png"}
    return {"labels": out_dir / f"{stem}_labels.tif", "mask": out_dir / f"{stem}_mask.png",
            "overlay": out_dir / f"{stem}_overlay.png"}


def segment_image(model, image: np.ndarray, config: dict,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None,
                  intensity: tuple[float, float] | None = None) -> np.ndarray:
    """Raw image -> int32 label image of separated nuclei (0 = background)."""
    return labels_from_probabilities(
        predict_quantised(model, image, config, options, intensity), instance_options)


def label_image_dtype(count: int):
    """uint16 (what most viewers expect) unless more nuclei than it can number."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def plan_outputs(images, out_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse inputs that would write the same outputs, and existing outputs unless
    --overwrite (replace them) or --resume (keep complete ones) says what to do."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise UsageError(f"two inputs would write the same outputs: {stems[path.stem]} and "
                             f"{path} (both named {path.stem!r})")
        stems[path.stem] = path
    if not overwrite and not resume:
        planned = [p for image in images for p in output_paths(image, out_dir).values()]
        existing = [p for p in planned + [out_dir / name for name in RUN_OUTPUTS] if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]}: output exists ({len(existing)} in all); pass "
                             "--resume to keep complete outputs and do the rest, or "
                             "--overwrite to replace them")


def previous_seconds(out_dir: Path) -> dict[str, str]:
    """Per-image times from an earlier run's summary.csv (for --resume), if there is one."""
    import csv

    try:
        with open(out_dir / "summary.csv", newline="", encoding="utf-8",
                  errors="backslashreplace") as handle:
            return {row["image"]: row["seconds"] for row in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error):
        return {}


def predict_files(model, record: dict, inputs, out_dir: Path, overwrite: bool = False,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None, progress=print,
                  resume: bool = False):
    """Segment every image in `inputs`. Per image: <stem>_labels.tif (uint16, 1..N = nuclei;
    uint32 above 65,535 nuclei), <stem>_mask.png (0/255) and <stem>_overlay.png (outlines), at
    the image's own size; for the run: measurements.csv (one row per nucleus) and summary.csv
    (one row per image, failures included).

    A file that cannot be read is reported and skipped; the others are still processed.
    With `resume`, images whose three outputs exist are not predicted again (their rows are
    measured from the saved labels). Every file is written atomically. Without
    `instance_options`, the model's tuned post-processing (from its record) is used.
    Returns a list of PredictionResult.
    """
    from nucleiseg.engines import as_engine
    from nucleiseg.instances import COLUMNS

    model = as_engine(model)
    images = find_images(inputs)
    instance_options = instance_options or instance_options_from(record)
    out_dir = Path(out_dir)
    plan_outputs(images, out_dir, overwrite, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = previous_seconds(out_dir) if resume else {}
    measurements = CsvStream(out_dir / "measurements.csv", ("image", *COLUMNS))
    summary = CsvStream(out_dir / "summary.csv", SUMMARY_COLUMNS)
    results = []
    try:
        for index, path in enumerate(images, start=1):
            name = display_name(path)
            paths = output_paths(path, out_dir)
            done = resume and all(p.exists() for p in paths.values())
            try:
                result, rows = (measure_saved(path, paths["labels"], earlier) if done else
                                segment_file(model, record, path, paths, options,
                                             instance_options))
            except DataError as error:
                result, rows = PredictionResult(path, error=str(error)), []
                progress(f"[{index}/{len(images)}] skipped: {display_name(error)}")
            else:
                how = "done before, " if done else ""
                progress(f"[{index}/{len(images)}] {name}: {how}{result.nuclei} nuclei")
            results.append(result)
            measurements.write({"image": name, **row} for row in rows)
            summary.write([{"image": name, "nuclei": result.nuclei,
                            "mean_area": round(result.mean_area, 2),
                            "seconds": round(result.seconds, 3), "error": result.error or ""}])
    except BaseException:
        measurements.discard()
        summary.discard()
        raise
    measurements.commit()
    summary.commit()
    return results


def display_name(item) -> str:
    """A file name or message printable on any terminal (non-UTF-8 bytes escaped)."""
    text = item.name if isinstance(item, Path) else str(item)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def segment_file(model, record: dict, path: Path, paths: dict, options, instance_options):
    """Read, predict, separate, write the three images; (PredictionResult, measurement rows).
    Huge images (whole-slide TIFF, OME-Zarr) go block by block (nucleiseg.blocks)."""
    from nucleiseg.blocks import is_large_input, segment_large_file
    from nucleiseg.instances import measure_nuclei
    from nucleiseg.viz import outline_overlay

    if is_large_input(path):
        return segment_large_file(model, record, path, paths, options, instance_options)

    start = time.perf_counter()
    image = read_image(path)
    intensity = intensity_range(image)  # once, for the model and for the overlay
    try:
        labels = segment_image(model, image, record["config"], options, instance_options,
                               intensity)
    except MemoryError:
        raise DataError(f"{path}: not enough memory to segment this "
                        f"{image.shape[1]}x{image.shape[0]} image; try a smaller --tile") from None
    count = int(labels.max())
    write_tiff(paths["labels"], labels.astype(label_image_dtype(count)))
    mask = (labels > 0).view(np.uint8)
    mask *= 255
    write_png(paths["mask"], mask)
    del mask
    write_png(paths["overlay"], outline_overlay(image, labels, *intensity))
    rows = measure_nuclei(labels, image)
    return PredictionResult(path, len(rows), mean_area(rows), time.perf_counter() - start), rows


def measure_saved(path: Path, labels_path: Path, earlier: dict):
    """Rows of an image whose outputs an earlier run wrote (--resume)."""
    from nucleiseg.blocks import is_large_input, measure_saved_large
    from nucleiseg.instances import measure_nuclei
    from nucleiseg.io import read_array

    if is_large_input(path):
        return measure_saved_large(path, labels_path, earlier)

    image, labels = read_image(path), read_array(labels_path)
    if labels.shape != image.shape[:2]:
        raise DataError(f"{labels_path}: does not match {path.name} (another image's output?); "
                        "delete it or use --overwrite")
    rows = measure_nuclei(labels, image)
    seconds = float(earlier.get(display_name(path), 0.0) or 0.0)
    return PredictionResult(path, len(rows), mean_area(rows), seconds, resumed=True), rows


def mean_area(rows) -> float:
    return float(np.mean([row["area"] for row in rows])) if rows else 0.0

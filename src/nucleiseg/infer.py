"""Prediction: normalise, resize to the model's input size, predict, back to native size."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from nucleiseg.errors import DataError, UsageError
from nucleiseg.io import find_images, read_image, write_png
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


def model_inputs(images, input_size: int) -> np.ndarray:
    """Raw images (any size, dtype, channels) -> normalised (N, S, S, 3) float32."""
    shape = (input_size, input_size)
    return np.stack([resize_image(normalize_image(image), shape) for image in images])


def probabilities_at(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Softmax of one image's logits, resized (bilinear) to `shape` (H, W)."""
    return resize_image(softmax(logits.astype(np.float32)), shape)


def predict_probabilities(model, image: np.ndarray, input_size: int) -> np.ndarray:
    """Class probabilities (H, W, C) at the image's own size."""
    logits = predict_logits(model, model_inputs([image], input_size))[0]
    return probabilities_at(logits, image.shape[:2])


def show_predictions(model, images: np.ndarray, masks: np.ndarray, path: Path) -> None:
    """Predict model-ready images and draw input / true mask / predicted mask rows to `path`
    (the original's `show_predictions`, to a file instead of a window)."""
    from nucleiseg.viz import prediction_grid

    prediction_grid(images, masks, create_mask(predict_logits(model, images)), path)


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    image: Path
    outputs: tuple[Path, ...] = ()
    seconds: float = 0.0
    error: str | None = None


def output_paths(image_path: Path, out_dir: Path) -> dict[str, Path]:
    stem = Path(image_path).stem
    return {"mask": out_dir / f"{stem}_mask.png", "overlay": out_dir / f"{stem}_overlay.png"}


def predict_files(model, record: dict, inputs, out_dir: Path, overwrite: bool = False,
                  progress=print):
    """Predict every image in `inputs`; per image write <stem>_mask.png (0/255) and
    <stem>_overlay.png at the image's own size.

    A file that cannot be read is reported and skipped; the others are still processed.
    Returns a list of PredictionResult.
    """
    from nucleiseg.viz import overlay

    images = find_images(inputs)
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise UsageError(f"two inputs would write the same outputs: {stems[path.stem]} and "
                             f"{path} (both named {path.stem!r})")
        stems[path.stem] = path
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        existing = [p for image in images for p in output_paths(image, out_dir).values()
                    if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]}: output exists ({len(existing)} in all); "
                             "pass --overwrite to replace outputs")
    input_size = int(record["config"]["image_size"])
    results = []
    for index, path in enumerate(images, start=1):
        start = time.perf_counter()
        try:
            image = read_image(path)
        except DataError as error:
            results.append(PredictionResult(path, error=str(error)))
            progress(f"[{index}/{len(images)}] skipped: {error}")
            continue
        probabilities = predict_probabilities(model, image, input_size)
        mask = create_mask(probabilities) > 0
        paths = output_paths(path, out_dir)
        write_png(paths["mask"], (mask * 255).astype(np.uint8))
        write_png(paths["overlay"], overlay(normalize_image(image), mask))
        results.append(PredictionResult(path, tuple(paths.values()), time.perf_counter() - start))
        progress(f"[{index}/{len(images)}] {path.name}: {int(mask.sum())} nucleus pixels")
    return results

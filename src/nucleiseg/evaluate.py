"""Evaluate a model on a labelled set: loss, pixel accuracy, foreground IoU and Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.data import labels_to_classes
from nucleiseg.infer import create_mask, model_inputs, predict_logits, probabilities_at
from nucleiseg.metrics import PixelCounts, pixel_counts
from nucleiseg.preprocess import image_kind, normalize_image, resize_labels


def cross_entropy(logits: np.ndarray, classes: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of logits (N, H, W, C) against classes (N, H, W)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, classes[..., None].astype(np.int64), axis=-1)
    return float(-picked.mean())


def evaluate_images(model, images, labels, input_size: int, names=None, batch_size: int = 8):
    """Evaluate on raw images and instance labels.

    The loss is computed at the model's input size (masks resized nearest); pixel metrics at
    each image's own size (probabilities resized back), pooled over all pixels, and per image.
    Returns (report dict, predicted masks at native size).
    """
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    inputs = model_inputs(images, input_size)
    logits = predict_logits(model, inputs, batch_size)
    small_classes = np.stack([labels_to_classes(resize_labels(label, inputs.shape[1:3]))
                              for label in labels])
    total, by_kind, per_image, predictions = PixelCounts(), {}, [], []
    for name, image, label, image_logits in zip(names, images, labels, logits):
        predicted = create_mask(probabilities_at(image_logits, label.shape)) > 0
        counts = pixel_counts(label, predicted)
        kind = image_kind(image)
        total = total + counts
        by_kind[kind] = by_kind.get(kind, PixelCounts()) + counts
        per_image.append({"image": name, "kind": kind, **counts.as_dict()})
        predictions.append(predicted)
    report = {
        "images": len(names),
        "loss": cross_entropy(logits, small_classes),
        **total.as_dict(),
        "by_kind": {kind: {"images": sum(row["kind"] == kind for row in per_image),
                           **by_kind[kind].as_dict()} for kind in sorted(by_kind)},
        "per_image": per_image,
    }
    return report, predictions


def evaluate_model(model_path: Path, data_dir: Path, figure_path: Path | None = None,
                   skip_bad: bool = False, figure_images: int = 4, split: str = "all") -> dict:
    """Load a saved model, evaluate it on a labelled folder, optionally draw test_predictions.

    `split` 'val' or 'train' keeps only the images the model's record lists on that side of
    its training split (to re-evaluate a run on its own validation images); 'all' keeps all.
    """
    from nucleiseg.errors import DataError
    from nucleiseg.io import find_samples, load_samples
    from nucleiseg.saving import load_model

    model, record = load_model(model_path)
    samples, skipped = find_samples(data_dir, skip_bad=skip_bad)
    if split != "all":
        wanted = set(record["split"][split])
        samples = [sample for sample in samples if sample.name in wanted]
        if not samples:
            raise DataError(f"{data_dir}: none of the model's {split} images are here")
    loaded, unreadable = load_samples(samples, skip_bad=skip_bad)
    names = [sample.name for sample, _, _ in loaded]
    images = [image for _, image, _ in loaded]
    labels = [label for _, _, label in loaded]
    report, predictions = evaluate_images(model, images, labels,
                                          int(record["config"]["image_size"]), names)
    report = {"model": str(model_path), "data": str(data_dir), "split": split, **report,
              "skipped": [f"{name}: {why}" for name, why in skipped + unreadable]}
    if figure_path is not None:
        test_predictions(images, labels, predictions, names, figure_path, figure_images)
        report["figure"] = str(figure_path)
    return report


def test_predictions(images, labels, predictions, names, path: Path, count: int = 4) -> None:
    """Input / true / predicted for `count` images, one of each kind first (the original's
    test_predictions)."""
    from nucleiseg.viz import pick_examples, prediction_grid

    shown = pick_examples([image_kind(image) for image in images], count)
    prediction_grid([normalize_image(images[i]) for i in shown], [labels[i] > 0 for i in shown],
                    [predictions[i] for i in shown], path, names=[names[i] for i in shown])


test_predictions.__test__ = False  # not a pytest test


def format_report(report: dict) -> str:
    """Markdown tables: overall figures, then pixel metrics per image kind."""
    rows = [("images", report["images"]), ("loss (at model input size)", f"{report['loss']:.4f}"),
            ("pixel accuracy", f"{report['pixel_accuracy']:.4f}"),
            ("foreground IoU", f"{report['foreground_iou']:.4f}"), ("Dice", f"{report['dice']:.4f}")]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| image kind | images | pixel accuracy | foreground IoU | Dice |",
              "|---|---|---|---|---|"]
    for kind, row in report["by_kind"].items():
        lines.append(f"| {kind} | {row['images']} | {row['pixel_accuracy']:.4f} | "
                     f"{row['foreground_iou']:.4f} | {row['dice']:.4f} |")
    return "\n".join(lines)

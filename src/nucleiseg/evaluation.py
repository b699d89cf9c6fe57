"""Evaluate a model (or the classical baseline) on a labelled set: pixel metrics (accuracy,
foreground IoU, Dice) and instance metrics (DSB average precision, F1), overall and per kind."""

from __future__ import annotations

import dataclasses
import functools
import operator
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.instances import InstanceOptions, instance_options_from
from nucleiseg.algorithms.metrics import InstanceScores, PixelCounts, match_instances, pixel_counts
from nucleiseg.algorithms.preprocess import image_kind, normalize_image
from nucleiseg.algorithms.targets import labels_to_classes
from nucleiseg.inference.predict import PredictOptions, options_for, segment_checked


def cross_entropy(probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Mean cross-entropy of class probabilities (H, W, C) against class targets (H, W)."""
    picked = np.take_along_axis(probabilities, classes[..., None].astype(np.int64), axis=-1)
    return float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())


def summarize(rows: list[dict], pixel: PixelCounts, instance: InstanceScores) -> dict:
    """Pixel metrics pooled over pixels; instance metrics averaged over images (as the DSB
    scored), plus F1 at IoU 0.5 pooled over all nuclei."""
    return {
        "images": len(rows),
        "loss": None if rows[0]["loss"] is None else float(np.mean([r["loss"] for r in rows])),
        **pixel.as_dict(),
        **{key: float(np.mean([row[key] for row in rows]))
           for key in ("ap_50", "ap_75", "dsb_score", "f1_50")},
        "f1_50_pooled": instance.f1[instance.at(0.5)],
        "true_nuclei": sum(row["true_nuclei"] for row in rows),
        "predicted_nuclei": sum(row["predicted_nuclei"] for row in rows),
    }


def model_segmenter(model, config: dict, options: PredictOptions | None = None,
                    instance_options: InstanceOptions | None = None):
    """image -> (predicted labels, class probabilities, {scale, diameter, warning}) with a trained
    model, at the scale `options` decides per image (as predict does)."""
    def segment(image):
        labels, probabilities, check = segment_checked(model, image, config, options,
                                                       instance_options, quantised=False)
        return labels, probabilities, {"scale": check.scale, "diameter": check.diameter,
                                       "warning": check.warning}

    return segment


def classical_segmenter(image):
    from nucleiseg.algorithms.classical import segment_classical

    return segment_classical(image), None


def evaluate_images(segment, images, labels, names=None, target: str = "binary"):
    """Evaluate `segment(image) -> (labels, probabilities or None[, extra row values])` on raw
    images and their true instance labels, at each image's own resolution.

    Returns (report dict: overall, by image kind and per image; predicted label images).
    The loss (cross-entropy of the probabilities) is None for a segmenter without them.
    """
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    rows, predictions, pixel_by_kind, instance_by_kind = [], [], {}, {}
    for name, image, label in zip(names, images, labels):
        predicted, probabilities, *extra = segment(image)
        pixel = pixel_counts(label, predicted)
        instance = match_instances(label, predicted)
        kind = image_kind(image)
        pixel_by_kind[kind] = pixel_by_kind.get(kind, PixelCounts()) + pixel
        instance_by_kind[kind] = (instance_by_kind[kind] + instance if kind in instance_by_kind
                                  else instance)
        loss = (None if probabilities is None else
                cross_entropy(probabilities, labels_to_classes(label, target)))
        rows.append({"image": name, "kind": kind, "loss": loss,
                     "true_nuclei": int(len(np.unique(label)) - (label.min() == 0)),
                     "predicted_nuclei": int(predicted.max()),
                     **pixel.as_dict(), **instance.as_dict(), **(extra[0] if extra else {})})
        predictions.append(predicted)
    overall = summarize(rows, sum(pixel_by_kind.values(), PixelCounts()),
                        functools.reduce(operator.add, instance_by_kind.values()))
    by_kind = {kind: summarize([row for row in rows if row["kind"] == kind], pixel_by_kind[kind],
                               instance_by_kind[kind]) for kind in sorted(pixel_by_kind)}
    return {**overall, "by_kind": by_kind, "per_image": rows}, predictions


def evaluate_model(model_path: Path | None, data_dir: Path, figure_path: Path | None = None,
                   skip_bad: bool = False, figure_images: int = 4, split: str = "all",
                   options: PredictOptions | None = None,
                   instance_options: InstanceOptions | None = None,
                   classical: bool = False, channel: int | str | None = None) -> dict:
    """Evaluate a saved model (None: the bundled ones, as predict runs them), or the
    classical baseline, on a labelled folder; optionally draw test_predictions.

    `split` 'val' or 'train' keeps only the images the model's record lists on that side of
    its training split (to re-evaluate a run on its own validation images); 'all' keeps all.
    With `classical`, the split is read from `model_path`'s record when one is given.
    `channel` picks the nuclear channel of multi-channel images (index or OME name).
    """
    from nucleiseg.errors import DataError
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.io.images import find_samples, load_samples
    from nucleiseg.model.saving import load_model, read_record

    if classical:
        record = read_record(model_path) if model_path is not None else None
        segment, target, method = classical_segmenter, "binary", "classical Otsu + watershed"
    else:
        # the bundled models (None) as predict runs them: colour images on the H&E one
        model, record = (load_engine(None, "keras") if model_path is None
                         else load_model(model_path))
        instance_options = instance_options or instance_options_from(record)
        options = options or options_for(record)
        segment = model_segmenter(model, record["config"], options, instance_options)
        target, method = record["config"].get("target", "binary"), "model"
    samples, skipped = find_samples(data_dir, skip_bad=skip_bad)
    if split != "all":
        if record is None:
            raise DataError("--split needs a model whose record lists its split (--model)")
        wanted = set(record["split"][split])
        samples = [sample for sample in samples if sample.name in wanted]
        if not samples:
            raise DataError(f"{data_dir}: none of the model's {split} images are here")
    loaded, unreadable = load_samples(samples, skip_bad=skip_bad, channel=channel)
    names = [sample.name for sample, _, _ in loaded]
    images = [image for _, image, _ in loaded]
    labels = [label for _, _, label in loaded]
    report, predictions = evaluate_images(segment, images, labels, names, target)
    report = {"method": method, "model": None if model_path is None else str(model_path),
              "data": str(data_dir), "split": split, "channel": channel, **report,
              "postprocessing": None if classical else dataclasses.asdict(instance_options),
              "skipped": [f"{name}: {why}" for name, why in skipped + unreadable]}
    if figure_path is not None:
        test_predictions(images, labels, predictions, names, figure_path, figure_images)
        report["figure"] = str(figure_path)
    return report


def test_predictions(images, labels, predictions, names, path: Path, count: int = 4) -> None:
    """Input / true / predicted for `count` images, one of each kind first (the original's
    test_predictions)."""
    from skimage.color import label2rgb

    from nucleiseg.render import pick_examples, prediction_grid

    shown = pick_examples([image_kind(image) for image in images], count)
    colour = lambda labels: label2rgb(labels, bg_label=0)  # one colour per nucleus
    prediction_grid([normalize_image(images[i]) for i in shown],
                    [colour(labels[i]) for i in shown], [colour(predictions[i]) for i in shown],
                    path, names=[names[i] for i in shown])


test_predictions.__test__ = False  # not a pytest test


def format_report(report: dict) -> str:
    """Markdown: overall figures, then a row per image kind."""
    columns = [("pixel accuracy", "pixel_accuracy"), ("foreground IoU", "foreground_iou"),
               ("Dice", "dice"), ("AP@0.5", "ap_50"), ("AP@0.75", "ap_75"),
               ("DSB score", "dsb_score"), ("F1@0.5", "f1_50")]
    header = ("| images | " + " | ".join(title for title, _ in columns)
              + " | nuclei (true / found) |")
    lines = ["| set " + header, "|---" * (len(columns) + 3) + "|"]
    for name, row in [("all", report), *report["by_kind"].items()]:
        values = " | ".join(f"{row[key]:.3f}" for _, key in columns)
        lines.append(f"| {name} | {row['images']} | {values} | "
                     f"{row['true_nuclei']} / {row['predicted_nuclei']} |")
    if report.get("postprocessing"):  # what the model's figures depend on besides the model
        lines.append("\npost-processing: " + ", ".join(
            f"{key} {value}" for key, value in report["postprocessing"].items()))
    return "\n".join(lines)

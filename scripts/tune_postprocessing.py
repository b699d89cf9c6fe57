"""Measure post-processing choices (thresholds, sizes, seed splitting) of a trained model.

    python scripts/tune_postprocessing.py MODEL DATA [--split train] [--count 60] [--kind K]
                                          [--as-predicted]

Predicts the class probabilities of `count` images of the model's `split` once (Keras, scale 1;
`--as-predicted`: as `nucleiseg predict` does, on its engine, with `--diameter auto` and the
stain match, MODEL "bundled" for the bundled pair, sizes scaled to each image's scale), then
scores
every combination of foreground threshold, marker threshold, minimum size, split levels,
minimum split size and minimum confidence (DSB score, AP@0.5, foreground IoU) and prints a
Markdown table, best first. Tune on training images and report on validation images, so the
reported figures stay honest.
"""

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.instances import InstanceOptions, labels_from_probabilities
from nucleiseg.algorithms.metrics import match_instances, pixel_counts
from nucleiseg.algorithms.preprocess import image_kind
from nucleiseg.algorithms.scale import scaled_sizes
from nucleiseg.cli import parse_split_levels
from nucleiseg.inference.predict import predict_probabilities
from nucleiseg.io.images import find_samples, load_samples
from nucleiseg.model.saving import load_model


def probabilities_as_predicted(model_path: Path, record: dict):
    """image -> (float probabilities at the image's size, the scale it was predicted at), as
    `nucleiseg predict` makes them: its engine (int8 ONNX where it lies beside the model; the
    bundled pair for "bundled"), --diameter auto, the stain match, the record's
    post-processing for the first pass's size estimate."""
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.inference.predict import options_for, segment_checked

    engine, _ = load_engine(None if str(model_path) == "bundled" else model_path)
    options, instance_options = options_for(record), instance_options_from(record)

    def predicted(image):
        _, probabilities, check = segment_checked(engine, image, record["config"], options,
                                                  instance_options, quantised=False)
        return probabilities, check.scale

    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("fluorescence", "histology", "brightfield"),
                        help="only images of this kind (as `nucleiseg eda` classifies them)")
    floats = lambda text: [float(v) for v in text.split(",")]
    parser.add_argument("--foreground", type=floats, default=[0.4, 0.5, 0.6],
                        help="foreground thresholds to try, comma-separated")
    parser.add_argument("--marker", type=floats, default=[0.3, 0.5, 0.7],
                        help="marker thresholds to try")
    parser.add_argument("--min-size", type=floats, default=[5, 15, 30], help="minimum sizes to try")
    levels = lambda text: [parse_split_levels(part) for part in text.split(";")]
    parser.add_argument("--split-levels", type=levels, default=[(), (0.8, 0.9)],
                        help="split levels to try: ';' between choices, e.g. 'none;0.8,0.9'")
    parser.add_argument("--min-split-size", type=floats, default=[80],
                        help="minimum split sizes to try")
    parser.add_argument("--min-confidence", type=floats, default=[0.0, 0.8],
                        help="minimum mean nucleus probabilities to try")
    parser.add_argument("--as-predicted", action="store_true",
                        help="probabilities as predict makes them (engine, auto scale, stain)")
    args = parser.parse_args()

    model, record = load_model(args.model)
    if args.as_predicted:
        predicted = probabilities_as_predicted(args.model, record)
    wanted = set(record["split"][args.split])
    samples = [s for s in find_samples(args.data)[0] if s.name in wanted]
    rng = np.random.default_rng(args.seed)
    pick = lambda items: [items[i] for i in sorted(
        rng.choice(len(items), min(args.count, len(items)), replace=False))]
    if args.kind:  # an image's kind is known once it is read: read all, keep that kind, pick
        loaded = pick([item for item in load_samples(samples)[0]
                       if image_kind(item[1]) == args.kind])
    else:  # pick, then read only those
        loaded, _ = load_samples(pick(samples))
    cached = [(*(predicted(image) if args.as_predicted else
                 (predict_probabilities(model, image, record["config"]), 1.0)), labels)
              for _, image, labels in loaded]
    rows = []
    for fg, marker, min_size, levels, split_size, confidence in itertools.product(
            args.foreground, args.marker, args.min_size, args.split_levels, args.min_split_size,
            args.min_confidence):
        options = InstanceOptions(fg, marker, int(min_size), split_levels=levels,
                                  min_split_size=int(split_size), min_confidence=confidence)
        dsb, ap50, pixels = [], [], None
        for probabilities, scale, labels in cached:
            sized = scaled_sizes({"min_size": options.min_size,
                                  "min_split_size": options.min_split_size}, scale)
            predicted = labels_from_probabilities(probabilities,
                                                  dataclasses.replace(options, **sized))
            scores = match_instances(labels, predicted)
            dsb.append(scores.dsb_score)
            ap50.append(scores.average_precision[0])
            counts = pixel_counts(labels, predicted)
            pixels = counts if pixels is None else pixels + counts
        rows.append((np.mean(dsb), np.mean(ap50), pixels.foreground_iou, fg, marker, int(min_size),
                     ",".join(map(str, levels)) or "none", int(split_size), confidence))
    print(f"{len(cached)} {args.split} images of {args.data}"
          + (f" ({args.kind})" if args.kind else ""))
    print("| DSB score | AP@0.5 | foreground IoU | foreground thr. | marker thr. | min size "
          "| split levels | min split size | min confidence |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda row: row[:3], reverse=True):
        print("| {:.4f} | {:.4f} | {:.4f} | {} | {} | {} | {} | {} | {} |".format(*row))


if __name__ == "__main__":
    main()

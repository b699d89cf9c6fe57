"""Post-processing sweep for H&E on cached probabilities (docs/results.md, H&E histology).

    python scripts/sweep_postprocessing_he.py RUN_DIR best|last tnbc-train|tnbc-val|monuseg

Predicts once per image with the run's checkpoint (scale 1), then scores foreground / marker
thresholds and the minimum confidence around the bundled model's tuned post-processing. Tune
on tnbc-train (every third TNBC training tile); the other two sets are for measuring only.
"""
import dataclasses
import functools
import json
import operator
import sys
from pathlib import Path

from nucleiseg.algorithms.instances import instance_options_from, labels_from_probabilities
from nucleiseg.algorithms.metrics import match_instances, pixel_counts
from nucleiseg.config import TrainConfig
from nucleiseg.inference.predict import PredictOptions, predict_probabilities
from nucleiseg.model.saving import bundled_model_path, read_record
from nucleiseg.training.fit import build_model

sys.path.insert(0, ".")
from benchmarks.histology import MONUSEG, TNBC, load  # noqa: E402


def main() -> None:
    run, which, set_name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = build_model(config)
    model.load_weights(run / "checkpoints" / f"{which}.weights.h5")
    split = json.loads((run / "split.json").read_text())
    base = instance_options_from(read_record(bundled_model_path()))
    if set_name == "tnbc-train":
        names = sorted(n for n in split["train"] if n[:2].isdigit() and "_" in n)[::3]
        images, labels = load(TNBC, set(names))
    elif set_name == "tnbc-val":
        images, labels = load(TNBC, set(split["val"]))
    else:
        images, labels = load(MONUSEG)
    print(set_name, len(images), flush=True)
    probabilities = [predict_probabilities(model, image, config.to_dict(), PredictOptions())
                     for image in images]
    for foreground in (0.6, 0.5, 0.4, 0.3):
        for confidence in (0.8, 0.7, 0.6, 0.5, 0.4):
            for marker in (0.5, 0.4, 0.3):
                options = dataclasses.replace(base, foreground_threshold=foreground,
                                              min_confidence=confidence, marker_threshold=marker)
                instances, pixels = [], []
                for found, truth in zip(probabilities, labels):
                    predicted = labels_from_probabilities(found, options)
                    instances.append(match_instances(truth, predicted))
                    pixels.append(pixel_counts(truth, predicted))
                scores = functools.reduce(operator.add, instances).as_dict()
                iou = functools.reduce(operator.add, pixels).as_dict()["foreground_iou"]
                print(f"foreground {foreground} confidence {confidence} marker {marker}: "
                      f"AP@0.5 {scores['ap_50']:.3f} DSB {scores['dsb_score']:.3f} "
                      f"IoU {iou:.3f}", flush=True)


if __name__ == "__main__":
    main()

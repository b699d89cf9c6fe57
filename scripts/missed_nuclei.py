"""Why true nuclei are missed: counts per image kind of the true nuclei that no prediction
matches at IoU > 0.5, by cause.

    python scripts/missed_nuclei.py DATA [--model MODEL] [--split val]

Causes as in nucleiseg.algorithms.metrics.missed_causes. Uses the model's tuned post-processing.
"""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.instances import instance_options_from
from nucleiseg.algorithms.metrics import missed_causes
from nucleiseg.algorithms.preprocess import image_kind
from nucleiseg.inference.engines import load_engine
from nucleiseg.inference.predict import PredictOptions, segment_image
from nucleiseg.io.images import find_samples, load_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", type=Path, help="default: the bundled model")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    args = parser.parse_args()

    engine, record = load_engine(args.model)
    wanted = set(record["split"][args.split])
    samples = [s for s in find_samples(args.data)[0] if s.name in wanted]
    loaded, _ = load_samples(samples)
    options = instance_options_from(record)
    by_kind, totals = {}, Counter()
    for _, image, labels in loaded:
        predicted = segment_image(engine, image, record["config"], PredictOptions(), options)
        kind = image_kind(image)
        by_kind.setdefault(kind, Counter()).update(missed_causes(labels, predicted))
        totals[kind] += len(np.unique(labels)) - 1
    print("| kind | true nuclei | missed | merged | small | not found | poor overlap |")
    print("|---|---|---|---|---|---|---|")
    for kind, causes in sorted(by_kind.items()):
        print(f"| {kind} | {totals[kind]} | {sum(causes.values())} | " + " | ".join(
            str(causes[c]) for c in ("merged", "small", "not found", "poor overlap")) + " |")


if __name__ == "__main__":
    main()

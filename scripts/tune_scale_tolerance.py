"""How --diameter auto decides: SCALE_TOLERANCE and the diameter estimate's weighting, tried on
training images (never on the validation images docs/results.md reports), native and shifted copies.

    python scripts/tune_scale_tolerance.py [--images 60] [--tolerances 1.25 1.5 2]
                                           [--upscale-tolerances 1.25 2] [--weightings area count]

--tolerances: SCALE_TOLERANCE (and UPSCALE_TOLERANCE too, unless --upscale-tolerances).
"""

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import nucleiseg.algorithms.scale  # noqa: E402
from benchmarks.common import DEFAULT_DATA  # noqa: E402
from benchmarks.robustness import score, shifted_copies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1.25, 1.5, 2.0])
    parser.add_argument("--upscale-tolerances", type=float, nargs="+")
    parser.add_argument("--weightings", nargs="+", choices=["area", "count"],
                        help="force this weighting of the diameter estimate (default: as "
                        "guarded_scale weighs it: count-median, area when the pass is unsure)")
    parser.add_argument("--conditions", nargs="+",
                        default=["native", "scale 0.5x", "scale 2x", "scale 0.33x", "scale 3x"])
    args = parser.parse_args()

    from nucleiseg.inference.engines import load_engine
    from nucleiseg.io.images import find_samples, load_samples

    engine, record = load_engine()
    samples, _ = find_samples(args.data, skip_bad=True)
    train = sorted((s for s in samples if s.name in set(record["split"]["train"])),
                   key=lambda s: s.name)
    chosen = np.random.default_rng(0).choice(len(train), args.images, replace=False)
    loaded, _ = load_samples([train[i] for i in sorted(chosen)], skip_bad=True)
    images, labels = [x for _, x, _ in loaded], [y for _, _, y in loaded]
    print("| tolerance down / up | weighting | "
          + " | ".join(f"{c} AP@0.5 / DSB" for c in args.conditions) + " |")
    print("|---|---|" + "---|" * len(args.conditions))
    estimate = nucleiseg.algorithms.scale.typical_diameter
    for tolerance, up, weighting in itertools.product(
            args.tolerances, args.upscale_tolerances or [None], args.weightings or ["as shipped"]):
        up = tolerance if up is None else up
        nucleiseg.algorithms.scale.SCALE_TOLERANCE = tolerance
        nucleiseg.algorithms.scale.UPSCALE_TOLERANCE = up
        if weighting != "as shipped":
            nucleiseg.algorithms.scale.typical_diameter = (
                lambda labels, _=None, weighting=weighting: estimate(labels, weighting))
        cells = []
        for condition in args.conditions:
            result = score(engine, record, *shifted_copies(condition, images, labels), "auto")
            cells.append(f"{result['ap_50']:.3f} / {result['dsb_score']:.3f}")
        print(f"| {tolerance:g} / {up:g} | {weighting} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

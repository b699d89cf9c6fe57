"""python -m benchmarks.robustness [--model MODEL] [--data DSB_FOLDER] [--images N]
                                  [--conditions NAME ...] [--out FOLDER]

How the model holds up on images unlike its training images. From the model's own validation
images (never trained on) it builds shifted copies, each with its true labels moved along:

  scale 0.33x, 0.5x, 2x, 3x   nuclei a third of / half / twice / three times their size
  pale stain                  colour images: haematoxylin halved, eosin x1.5 (rgb2hed space)
  dim and noisy               intensities at 15% of their range, Gaussian noise, 8-bit
  inverted                    grey images inverted: dark nuclei on a bright background
  colour composite            grey images as blue (DAPI-like) with a dim green copy, RGB
  MoNuSeg H&E                 13 40x tiles of seven organs (other labs; measuring only)

and scores the model on each (AP@0.5, DSB score, foreground IoU) with a fixed scale of 1 and
with `--diameter auto`, as `nucleiseg predict` runs it (the int8 ONNX engine where it lies
beside the model). Prints a Markdown table; writes robustness.json and robustness.md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, markdown_table

MONUSEG = DEFAULT_DATA.parent / "monuseg2018-train-subset"
SCALES = (0.33, 0.5, 2.0, 3.0)
CONDITIONS = ("native", *(f"scale {s:g}x" for s in SCALES), "pale stain", "dim and noisy",
              "inverted", "colour composite", "MoNuSeg H&E")


def rescaled(image: np.ndarray, labels: np.ndarray, factor: float):
    """Image resized bilinear (anti-aliased when shrinking; skimage, as the copies have always
    been made, whatever the library resizes with), labels nearest, same dtype."""
    from skimage.transform import resize

    from nucleiseg.algorithms.preprocess import resize_labels

    shape = tuple(max(8, round(n * factor)) for n in labels.shape)
    resized = resize(image.astype(np.float32), (*shape, *image.shape[2:]), order=1,
                     anti_aliasing=factor < 1, preserve_range=True, mode="reflect")
    if np.issubdtype(image.dtype, np.integer):
        resized = np.clip(np.round(resized), 0, np.iinfo(image.dtype).max).astype(image.dtype)
    return resized, resize_labels(labels, shape)


def pale_stain(image: np.ndarray) -> np.ndarray | None:
    """Less haematoxylin, more eosin (colour images only; None for grey ones)."""
    from skimage.color import hed2rgb, rgb2hed

    from nucleiseg.algorithms.preprocess import image_kind, to_rgb

    if image_kind(image) != "histology":
        return None
    rgb = to_rgb(image).astype(np.float64) / 255
    hed = rgb2hed(rgb)
    change = hed2rgb(hed * np.array([0.5, 1.5, 1.0])) - hed2rgb(hed)
    return np.clip(np.round((rgb + change) * 255), 0, 255).astype(np.uint8)


def dim_and_noisy(image: np.ndarray, seed: int) -> np.ndarray:
    """15% of the intensity range, plus Gaussian noise of 1.5% of the full range, in 8 bits."""
    rng = np.random.default_rng(seed)
    rgb = image[..., :3].astype(np.float32)
    grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]))
    noise = rng.normal(0, 0.015 * 255, rgb.shape[:2] + ((1,) if grey else (3,)))
    return np.clip(np.round(rgb * 0.15 + 5 + noise), 0, 255).astype(np.uint8)


def inverted(image: np.ndarray) -> np.ndarray | None:
    """Grey fluorescence images inverted (a bright-field look); None for the others."""
    from nucleiseg.algorithms.preprocess import image_kind

    if image_kind(image) != "fluorescence":
        return None
    return (255 - image[..., :3]).astype(np.uint8)


def colour_composite(image: np.ndarray) -> np.ndarray | None:
    """Grey fluorescence images as an RGB composite: the nuclei blue (DAPI-like), a third of
    them green (a second stain); None for the others."""
    from nucleiseg.algorithms.preprocess import image_kind

    if image_kind(image) != "fluorescence":
        return None
    composite = np.zeros((*image.shape[:2], 3), np.uint8)
    composite[..., 2], composite[..., 1] = image[..., 0], image[..., 0] // 3
    return composite


def shifted_copies(condition: str, images, labels):
    """(images, labels) of one condition; images a condition does not apply to are left out."""
    if condition == "native":
        return images, labels
    if condition.startswith("scale "):
        factor = float(condition.split()[1].rstrip("x"))
        pairs = [rescaled(image, label, factor) for image, label in zip(images, labels)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if condition == "pale stain":
        made = [pale_stain(image) for image in images]
    elif condition == "dim and noisy":
        made = [dim_and_noisy(image, seed) for seed, image in enumerate(images)]
    elif condition == "inverted":
        made = [inverted(image) for image in images]
    elif condition == "colour composite":
        made = [colour_composite(image) for image in images]
    else:
        raise ValueError(condition)
    kept = [i for i, image in enumerate(made) if image is not None]
    return [made[i] for i in kept], [labels[i] for i in kept]


def validation_set(model_record: dict, data: Path, count: int | None, seed: int = 0):
    """The model's validation images and labels; `count` of them (each kind in its share)."""
    from nucleiseg.algorithms.preprocess import image_kind
    from nucleiseg.io.images import find_samples, load_samples

    samples, _ = find_samples(data, skip_bad=True)
    wanted = set(model_record["split"]["val"])
    loaded, _ = load_samples([s for s in samples if s.name in wanted], skip_bad=True)
    if count is not None and count < len(loaded):
        rng = np.random.default_rng(seed)
        kinds = [image_kind(image) for _, image, _ in loaded]
        chosen = []
        for kind in sorted(set(kinds)):
            members = [i for i, k in enumerate(kinds) if k == kind]
            share = max(1, round(count * len(members) / len(loaded)))
            chosen += list(rng.choice(members, size=min(share, len(members)), replace=False))
        loaded = [loaded[i] for i in sorted(chosen)]
    return [image for _, image, _ in loaded], [label for _, _, label in loaded]


def training_size(record: dict, data: Path) -> dict:
    from nucleiseg.algorithms.scale import training_nucleus_size
    from nucleiseg.io.images import find_samples, load_samples

    samples, _ = find_samples(data, skip_bad=True)
    wanted = set(record["split"]["train"])
    loaded, _ = load_samples([s for s in samples if s.name in wanted], skip_bad=True)
    return training_nucleus_size(label for _, _, label in loaded)


def monuseg_set():
    from nucleiseg.io.images import find_samples, load_samples

    samples, _ = find_samples(MONUSEG, skip_bad=True)
    loaded, _ = load_samples(samples, skip_bad=True)
    return [image for _, image, _ in loaded], [label for _, _, label in loaded]


def score(engine, record, images, labels, diameter) -> dict:
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.evaluation import evaluate_images, model_segmenter
    from nucleiseg.inference.predict import options_for

    options = options_for(record, diameter=diameter)
    segment = model_segmenter(engine, record["config"], options, instance_options_from(record))
    seconds = []

    def timed(image):
        start = time.perf_counter()
        result = segment(image)
        seconds.append(time.perf_counter() - start)
        return result

    report, _ = evaluate_images(timed, images, labels,
                                target=record["config"].get("target", "binary"))
    rows = report["per_image"]
    return {"images": report["images"], "ap_50": report["ap_50"],
            "dsb_score": report["dsb_score"], "foreground_iou": report["foreground_iou"],
            "scales": [row["scale"] for row in rows], "seconds": seconds,
            "warned": sum(bool(row["warning"]) for row in rows),
            "warnings": [row["warning"] for row in rows if row["warning"]]}


def time_at_right_scale(engine, record, images, scales, repeats: int = 2):
    """(seconds at scale 1, seconds with --diameter auto) over the images that auto left at
    scale 1 (already at the right scale): the cost of the estimate itself. Each image is timed
    both ways in turn, the best of `repeats`, so other load on the machine hits both alike."""
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.evaluation import model_segmenter
    from nucleiseg.inference.predict import options_for

    fixed, auto = (model_segmenter(engine, record["config"], options_for(record, diameter=d),
                                   instance_options_from(record)) for d in (None, "auto"))
    totals = np.zeros(2)
    for image, scale in zip(images, scales):
        if scale != 1.0:
            continue
        best = np.full(2, np.inf)
        for _ in range(repeats):
            for way, segment in enumerate((fixed, auto)):
                start = time.perf_counter()
                segment(image)
                best[way] = min(best[way], time.perf_counter() - start)
        totals += best
    return totals


def cost_line(counted: int, totals) -> str:
    if not counted:
        return "No image was left at scale 1."
    fixed, auto = totals
    return (f"On the {counted} images that --diameter auto left at scale 1, it took "
            f"{auto / fixed:.2f}x the time of a fixed-scale run ({auto:.1f} s against "
            f"{fixed:.1f} s; each image timed both ways in turn, best of 2).")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: the bundled model")
    parser.add_argument("--engine", default="auto", help="as for nucleiseg predict")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, help="this many validation images (default all)")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    from nucleiseg.inference.engines import load_engine

    engine, record = load_engine(args.model, args.engine)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder (the DSB data; --data)")
    if "nucleus_size" not in record:  # a model made before nucleiseg recorded it
        record["nucleus_size"] = training_size(record, args.data)
    images, labels = validation_set(record, args.data, args.images)
    rows, results = [], {}
    cost, counted = np.zeros(2), 0
    for condition in args.conditions:
        if condition == "MoNuSeg H&E":
            if not MONUSEG.is_dir():
                print(f"skipped {condition}: {MONUSEG} is absent")
                continue
            shifted = monuseg_set()
        else:
            shifted = shifted_copies(condition, images, labels)
        fixed = score(engine, record, *shifted, diameter=None)
        auto = score(engine, record, *shifted, diameter="auto")
        results[condition] = {"fixed": fixed, "auto": auto}
        cost += time_at_right_scale(engine, record, shifted[0], auto["scales"])
        counted += auto["scales"].count(1.0)
        rows.append([condition, fixed["images"], fixed["ap_50"], auto["ap_50"],
                     fixed["dsb_score"], auto["dsb_score"], fixed["foreground_iou"],
                     auto["foreground_iou"], float(np.median(auto["scales"])),
                     sum(auto["seconds"]) / sum(fixed["seconds"]),
                     f"{auto['warned']} / {fixed['warned']}"])
        print(f"{condition}: AP@0.5 {fixed['ap_50']:.3f} -> {auto['ap_50']:.3f}", flush=True)
    table = markdown_table(
        ["images", "n", "AP@0.5 scale 1", "AP@0.5 auto", "DSB scale 1", "DSB auto",
         "IoU scale 1", "IoU auto", "median auto scale", "time auto / scale 1",
         "warned auto / scale 1"], rows)
    table += "\n\n" + cost_line(counted, cost)
    command = "python -m benchmarks.robustness " + " ".join(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps(
        {"command": command.strip(), "engine": engine.name, "model": str(args.model or "bundled"),
         "results": results, "seconds_at_right_scale": {"fixed": cost[0], "auto": cost[1]}},
        indent=2) + "\n")
    (args.out / "robustness.md").write_text(f"`{command.strip()}` ({engine.name})\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()

"""python -m benchmarks.histology [--model MODEL ...] [--out FOLDER]

H&E and the rest, side by side: each model (default: the bundled one) as `nucleiseg predict`
runs it (the int8 ONNX engine where it lies beside the model, `--diameter auto`), and the
classical baseline (Otsu + watershed), scored on

  TNBC held-out patients   the TNBC tiles on the validation side of the first model's
                           split (whole patients; never trained on)
  MoNuSeg subset           13 40x H&E tiles of seven organs, other labs (measuring only:
                           never trained on)
  DSB held-out             the DSB validation images of the first model's split (85)
  DSB held-out histology   those of them that are colour (H&E-like) images

with AP@0.5, DSB score (mean AP over IoU 0.5-0.95), foreground IoU, how many images were
warned about, the median automatic scale and seconds per image. Prints a Markdown table;
writes histology.json and histology.md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, markdown_table

DATA = DEFAULT_DATA.parent
TNBC = DATA / "tnbc2018"
MONUSEG = DATA / "monuseg2018-train-subset"


def load(folder: Path, names=None):
    from nucleiseg.io.images import find_samples, load_samples

    samples, _ = find_samples(folder, skip_bad=True)
    if names is not None:
        samples = [s for s in samples if s.name in names]
    loaded, _ = load_samples(samples, skip_bad=True)
    return [image for _, image, _ in loaded], [labels for _, _, labels in loaded]


def sets(split: dict) -> dict:
    """{name: (images, labels)} of the data sets that are here; `split` names the held-out
    images ("val")."""
    from nucleiseg.algorithms.preprocess import image_kind

    held_out = set(split["val"])
    found = {}
    if TNBC.is_dir():
        found["TNBC held-out patients"] = load(TNBC, held_out)
    if MONUSEG.is_dir():
        found["MoNuSeg subset"] = load(MONUSEG)
    if DEFAULT_DATA.is_dir():
        images, labels = load(DEFAULT_DATA, held_out)
        found["DSB held-out"] = images, labels
        colour = [i for i, image in enumerate(images) if image_kind(image) == "histology"]
        found["DSB held-out histology"] = ([images[i] for i in colour],
                                           [labels[i] for i in colour])
    return {name: pair for name, pair in found.items() if pair[0]}


def score(segment, images, labels) -> dict:
    from nucleiseg.evaluation import evaluate_images

    seconds = []

    def timed(image):
        start = time.perf_counter()
        result = segment(image)
        seconds.append(time.perf_counter() - start)
        return result

    report, _ = evaluate_images(timed, images, labels, target="boundary")
    rows = report["per_image"]
    scales = [row.get("scale", 1.0) for row in rows]
    return {"images": report["images"], "ap_50": report["ap_50"],
            "dsb_score": report["dsb_score"], "foreground_iou": report["foreground_iou"],
            "warned": sum(bool(row.get("warning")) for row in rows),
            "median_scale": float(np.median(scales)),
            "seconds_per_image": sum(seconds) / max(1, len(seconds))}


def segmenters(models, engine_name: str, postprocessing: dict | None = None,
               stain: bool = True, tta: int = 1):
    """[(name, segment function, record)] for each model and the classical baseline;
    `postprocessing`: instead of each model's recorded one (trying a tuning before shipping);
    `stain`: False gives colour images to the models unmatched (--no-stain-normalisation);
    `tta`: test-time augmentation of the models (1, 4 or 8), as predict --tta."""
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.evaluation import classical_segmenter, model_segmenter
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.inference.predict import options_for

    found = []
    for path in models:
        engine, record = load_engine(path, engine_name)
        if postprocessing is not None:
            record = {**record, "postprocessing": postprocessing}
        options = options_for(record, stain=stain, tta=tta)
        segment = model_segmenter(engine, record["config"], options, instance_options_from(record))
        found.append((f"{path or 'bundled'} ({engine.name})", segment, record))
    found.append(("classical (Otsu + watershed)", classical_segmenter, None))
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="a model to score (repeat; default: the bundled one); the first "
                        "one's split says which images are held out")
    parser.add_argument("--engine", default="auto", help="as for nucleiseg predict")
    parser.add_argument("--split", type=Path, help="which images are held out: a model, or a "
                        "training run's split.json (default: the first model's record)")
    parser.add_argument("--postprocessing", type=json.loads,
                        help="post-processing as JSON instead of the models' recorded one, "
                        "e.g. '{\"min_confidence\": 0.6, \"by_kind\": {...}}'")
    parser.add_argument("--no-stain-normalisation", action="store_true",
                        help="colour images unmatched, as predict --no-stain-normalisation")
    parser.add_argument("--tta", type=int, choices=(1, 4, 8), default=1,
                        help="test-time augmentation of the models, as predict --tta")
    parser.add_argument("--sets", nargs="+", help="only these data sets (names as printed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    from nucleiseg.model.saving import read_record

    runs = segmenters(args.model or [None], args.engine, args.postprocessing,
                      not args.no_stain_normalisation, args.tta)
    split = runs[0][2]["split"]
    if args.split is not None:
        split = (json.loads(args.split.read_text()) if args.split.suffix == ".json"
                 else read_record(args.split)["split"])
    data = sets(split)
    if args.sets:
        data = {name: pair for name, pair in data.items() if name in args.sets}
    if not data:
        raise SystemExit(f"none of the data sets is here (looked in {DATA})")
    rows, results = [], {}
    for set_name, (images, labels) in data.items():
        for name, segment, _ in runs:
            found = score(segment, images, labels)
            results.setdefault(set_name, {})[name] = found
            rows.append([set_name, name, found["images"], found["ap_50"], found["dsb_score"],
                         found["foreground_iou"], found["warned"], found["median_scale"],
                         found["seconds_per_image"]])
            print(f"{set_name} / {name}: AP@0.5 {found['ap_50']:.3f}, IoU "
                  f"{found['foreground_iou']:.3f}", flush=True)
    table = markdown_table(["data set", "segmenter", "images", "AP@0.5", "DSB score",
                            "foreground IoU", "warned", "median scale", "s / image"], rows)
    command = ("python -m benchmarks.histology " + " ".join(argv)).strip()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "histology.json").write_text(json.dumps(
        {"command": command, "results": results}, indent=2) + "\n")
    (args.out / "histology.md").write_text(f"`{command}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()

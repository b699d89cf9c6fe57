"""python -m benchmarks.finetune --data FOLDER [--images N] [--minutes M] [--seed S]
                               [--model MODEL] [--out FOLDER] [-- TRAIN OPTIONS]

The correct-and-retrain loop, measured: fine-tune a model (default: the bundled one) on N
images of a labelled set for at most M minutes of training on this machine (`nucleiseg train
--init-model MODEL --minutes M`, as a user would run it), then score the starting and the
fine-tuned model on the set's other images and on the DSB held-out images (what the fine-tune
may have forgotten). Both models run on the same (Keras) engine, `--diameter auto`. Options
after `--` go to `nucleiseg train` (e.g. `-- --learning-rate 0.0003`).

Example (the MoNuSeg subset is for measuring only: this model is never shipped):
  python -m benchmarks.finetune --data ../shared/data/monuseg2018-train-subset --images 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, markdown_table
from benchmarks.histology import load, score


def chosen(names: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(sorted(names), size=count, replace=False).tolist())


def copy_samples(data: Path, names: list[str], target: Path) -> Path:
    """The chosen samples in the paired layout (images/, masks/ as label TIFFs)."""
    from nucleiseg.io.images import find_samples, load_samples, write_labels, write_png

    samples, _ = find_samples(data, skip_bad=True)
    loaded, _ = load_samples([s for s in samples if s.name in names], skip_bad=True)
    for sample, image, labels in loaded:
        write_png(target / "images" / f"{sample.name}.png", image)
        (target / "masks").mkdir(parents=True, exist_ok=True)
        write_labels(target / "masks" / f"{sample.name}.tif", labels)
    return target


def scorer(model: Path):
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.evaluation import model_segmenter
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.inference.predict import options_for

    engine, record = load_engine(model, "keras")
    return model_segmenter(engine, record["config"], options_for(record),
                           instance_options_from(record)), record


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="labelled set to adapt to")
    parser.add_argument("--images", type=int, default=4, help="images to fine-tune on")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0, help="which images are chosen")
    parser.add_argument("--model", default="bundled", help="model to start from: a .keras "
                        "file, bundled (the general model) or bundled-he (the H&E one)")
    parser.add_argument("--dsb", type=Path, default=DEFAULT_DATA, help="DSB data folder")
    parser.add_argument("--replay", type=int, default=0, metavar="N",
                        help="also train on N of the starting model's own DSB training images "
                        "(a second --data folder, sampled in balance with the new images)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(own)

    from nucleiseg.io.images import find_samples
    from nucleiseg.model.saving import (
        BUNDLED_NAMES,
        bundled_model_path,
        read_record,
        resolve_model_path,
    )

    start_model = resolve_model_path(Path(args.model))
    # forgetting is measured on the DSB images the general model never trained on (the
    # H&E model's own split holds none of them out)
    dsb_held = read_record(bundled_model_path() if args.model in BUNDLED_NAMES
                           else start_model)["split"]["val"]
    names = [s.name for s in find_samples(args.data, skip_bad=True)[0]]
    if args.images >= len(names):
        raise SystemExit(f"{args.data}: {len(names)} images; --images must leave some to score")
    tuned_on = chosen(names, args.images, args.seed)
    rest = sorted(set(names) - set(tuned_on))
    work = Path(tempfile.mkdtemp(prefix="nucleiseg-finetune-"))
    try:
        train_data = copy_samples(args.data, tuned_on, work / "data")
        replay = []
        if args.replay:
            seen = read_record(start_model)["split"]["train"]
            dsb_names = [s.name for s in find_samples(args.dsb, skip_bad=True)[0]
                         if s.name in set(seen)]
            replay = ["--data", str(copy_samples(args.dsb, chosen(dsb_names, args.replay,
                                                                  args.seed), work / "replay"))]
        command = ["nucleiseg", "train", "--init-model", args.model, "--data", str(train_data),
                   *replay,
                   "--out", str(work / "run"), "--minutes", f"{args.minutes:g}",
                   "--epochs", "1000", *extra]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nucleiseg", *command[1:]], check=True)
        wall = time.perf_counter() - started
        tuned_model = work / "run" / "model.keras"

        start_segment, _ = scorer(start_model)
        tuned_segment, tuned_record = scorer(tuned_model)
        held_images, held_labels = load(args.data, set(rest))
        dsb = load(args.dsb, set(dsb_held)) if args.dsb.is_dir() else None
        results, rows = {}, []
        for set_name, (images, labels) in {f"{args.data.name} other {len(rest)}":
                                           (held_images, held_labels),
                                           **({"DSB held-out": dsb} if dsb else {})}.items():
            before, after = score(start_segment, images, labels), score(tuned_segment, images,
                                                                         labels)
            results[set_name] = {"before": before, "after": after}
            rows.append([set_name, len(images), before["ap_50"], after["ap_50"],
                         before["dsb_score"], after["dsb_score"], before["foreground_iou"],
                         after["foreground_iou"]])
            print(f"{set_name}: AP@0.5 {before['ap_50']:.3f} -> {after['ap_50']:.3f}",
                  flush=True)
        metrics = tuned_record["metrics"]
        table = markdown_table(["scored on", "images", "AP@0.5 before", "AP@0.5 after",
                                "DSB before", "DSB after", "IoU before", "IoU after"], rows)
        summary = (f"Fine-tuned on {args.images} images ({', '.join(tuned_on)})"
                   + (f" with {args.replay} of the model's DSB training images replayed"
                      if args.replay else "") + " for "
                   f"{metrics['training_seconds'] / 60:.1f} min of training "
                   f"({metrics['epochs_run']} epochs, {wall / 60:.1f} min in all with loading "
                   f"and saving); {metrics.get('stopped', 'ran all epochs')}.")
        line = ("python -m benchmarks.finetune " + " ".join(argv)).strip()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "finetune.json").write_text(json.dumps(
            {"command": line, "tuned_on": tuned_on, "scored_on": rest, "results": results,
             "training": metrics, "train_command": " ".join(command), "wall_seconds": wall},
            indent=2, default=float) + "\n")
        (args.out / "finetune.md").write_text(f"`{line}`\n\n{table}\n\n{summary}\n")
        print(table + "\n\n" + summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

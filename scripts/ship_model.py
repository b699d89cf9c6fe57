"""Ship a trained run as the package's pretrained model (src/nucleiseg/pretrained/).

    python scripts/ship_model.py RUN_DIR [--evaluation EVAL.json]
    python scripts/ship_model.py --bundled --postprocessing JSON    # re-tuned, same weights
    python scripts/ship_model.py RUN_DIR --he    # as the H&E model colour images run on

Saves the run's best model without optimizer state (smaller, inference only), keeping its
record (config, data, split, metrics, command), and writes pretrained/MODEL.md describing it.
`--bundled` ships the bundled model again (its weights and record) with what is given changed.
`--evaluation` adds the summary of a `nucleiseg evaluate --json` report to the record;
`--postprocessing` the tuned post-processing that predict and evaluate then use by default
(without it, the post-processing the evaluation used).
"""

import argparse
import json
import os
import random
import shlex
import tempfile
from pathlib import Path

import keras

from nucleiseg.algorithms.scale import training_nucleus_size
from nucleiseg.config import TrainConfig
from nucleiseg.export.exporter import export_model
from nucleiseg.io.images import find_samples, load_samples
from nucleiseg.model.saving import (
    BUNDLED_HE_MODEL,
    BUNDLED_MODEL,
    bundled_model_path,
    load_model,
    read_record,
    save_model,
)
from nucleiseg.training.fit import build_model

SUMMARY_KEYS = ("images", "pixel_accuracy", "foreground_iou", "dice", "ap_50", "ap_75",
                "dsb_score", "f1_50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--bundled", action="store_true",
                        help="the bundled model again instead of a run (e.g. re-tuned)")
    parser.add_argument("--he", action="store_true",
                        help="ship as the bundled H&E model (nuclei_he.keras, MODEL_HE.md) "
                        "that colour images run on, not the general one")
    parser.add_argument("--evaluation", type=Path, help="a `nucleiseg evaluate --json` report")
    parser.add_argument("--command", help="the training command, if the record lacks it")
    parser.add_argument("--init-command", help="the command that trained the --init-model this "
                        "run started from, if the record lacks it")
    parser.add_argument("--weights", choices=("best", "last"), default="best",
                        help="the run's best epoch (model.keras) or its last completed one "
                        "(checkpoints/last.weights.h5)")
    parser.add_argument("--stain-reference", type=Path, metavar="FOLDER",
                        help="record the CIELAB statistics of the colour training images in "
                        "this data folder as the stain colour images are matched to "
                        "(nucleiseg.algorithms.stain)")
    parser.add_argument("--postprocessing", type=json.loads, default={},
                        help='tuned InstanceOptions as JSON, e.g. \'{"marker_threshold": 0.7}\'')
    args = parser.parse_args()
    if args.bundled == (args.run_dir is not None):
        parser.error("give a RUN_DIR or --bundled")

    path = bundled_model_path(BUNDLED_HE_MODEL if args.he else BUNDLED_MODEL)
    model, record = load_model(args.run_dir / "model.keras" if args.run_dir else path)
    inference = keras.Model.from_config(model.get_config())
    if args.bundled:
        inference.set_weights(model.get_weights())
    elif args.weights == "last":  # e.g. when a mixed validation set's loss chose an early epoch
        trained = build_model(TrainConfig.from_dict(record["config"]))
        trained.load_weights(args.run_dir / "checkpoints" / "last.weights.h5")
        inference.set_weights(trained.get_weights())
        done = json.loads((args.run_dir / "checkpoints" / "last.json").read_text())
        record["weights"] = (f"last epoch ({done['epochs_done']}), not the best validation "
                             f"loss (epoch {record['metrics']['best_epoch']})")
    else:
        inference.set_weights(model.get_weights())
    if args.command and not record.get("command"):
        record["command"] = args.command
    if isinstance(record.get("init_model"), str):  # recorded by an older nucleiseg: path only
        record["init_model"] = {"path": record["init_model"], "command": args.init_command}
    if "nucleus_size" not in record:  # a run made before nucleiseg recorded it
        record["nucleus_size"] = training_nucleus_size(training_labels(record))
    report = json.loads(args.evaluation.read_text()) if args.evaluation else None
    if args.postprocessing or (report or {}).get("postprocessing"):  # given, else as evaluated
        record["postprocessing"] = args.postprocessing or report["postprocessing"]
    if args.stain_reference:
        record["stain_reference"] = stain_reference(record, args.stain_reference)
    if report:
        record["evaluation"] = {
            "command": report.get("command"), "split": report["split"],
            "overall": {k: report[k] for k in SUMMARY_KEYS},
            "by_kind": {kind: {k: row[k] for k in SUMMARY_KEYS}
                        for kind, row in report["by_kind"].items()},
        }
    save_model(inference, path, record)
    # Its ONNX exports beside it: what `nucleiseg predict` runs when onnxruntime is installed.
    export_model(path, "onnx", path.with_suffix(".onnx"), overwrite=True)
    # int8 ranges from training images only; the H&E model's from the general model's (DSB of
    # every kind and TNBC): measured closer to its Keras results than its own colour images
    # (docs/models.md)
    ranges_from = read_record(bundled_model_path(BUNDLED_MODEL)) if args.he else record
    with tempfile.TemporaryDirectory() as calibration:
        chosen = []
        folders = data_folders(ranges_from)
        for folder in folders:  # each folder in an equal share: H&E ranges count too
            samples, _ = find_samples(folder, skip_bad=True)
            own = [s for s in samples if s.name in set(ranges_from["split"]["train"])]
            random.Random(0).shuffle(own)
            chosen += own[:64 // len(folders)]
        for sample in chosen:
            os.symlink(sample.image_path.resolve(),
                       Path(calibration) / f"{sample.name}{sample.image_path.suffix}")
        export_model(path, "onnx-int8", path.with_name(path.stem + ".int8.onnx"),
                     overwrite=True, calibration=Path(calibration))

    split = (json.loads((args.run_dir / "split.json").read_text()) if args.run_dir else
             recorded_split(record))
    kinds = split["kinds"]
    count = lambda names: ", ".join(f"{k} {sum(kinds[n] == k for n in names)}"
                                    for k in sorted(set(kinds.values())))
    lines = [
        "# The bundled H&E model" if args.he else "# The bundled pretrained model", "",
        *(["Colour (H&E) images run on it instead of the general model (`MODEL.md`), with the "
           "general model's options, post-processing, nucleus size and stain reference, "
           "which it inherited (docs/models.md).", ""] if args.he else []),
        f"`{path.name}` ({path.stat().st_size / 2**20:.1f} MB): made by nucleiseg "
        f"{record['nucleiseg_version']} on {record['created']}.", "",
        *recipe_lines(record),
        "Data:", "", *[f"- `{folder}`: {DATA_CREDITS.get(folder.name, '')}"
                       for folder in data_folders(record)], "",
        f"Split (seed {split['seed']}, each folder on its own, stratified by image kind"
        f"{', whole groups of ' + repr(split['grouped_by']) if split.get('grouped_by') else ''}"
        f"): "
        f"{len(split['train'])} training images ({count(split['train'])}), "
        f"{len(split['val'])} validation images ({count(split['val'])}), never trained on.", "",
        *([f"Weights: {record['weights']}; the training metrics below are the best epoch's.",
           ""] if record.get("weights") else []),
        "Configuration:", "", "```json", json.dumps(record["config"], indent=2), "```", "",
        "Training:", "", "```json", json.dumps(record["metrics"], indent=2), "```", "",
        f"`{path.with_suffix('.onnx').name}` is its ONNX export and "
        f"`{path.stem}.int8.onnx` its int8 quantisation (calibrated on crops of 64 training "
        f"images{' of the general model' if args.he else ''}, each data folder in an equal "
        "share), both made by `nucleiseg export` and "
        "checked against it; `nucleiseg predict` "
        "runs the int8 one with ONNX Runtime when that is installed (docs/performance.md).",
    ]
    size = record["nucleus_size"]
    lines += ["", f"Nucleus size in training (what `--diameter auto` resizes images to): median "
              f"diameter {size['median_diameter']} px; per-image medians from "
              f"{size['image_median_p10']} to {size['image_median_p90']} px (10th-90th "
              "percentile)."]
    if "postprocessing" in record:
        lines += ["", "Post-processing (tuned with scripts/tune_postprocessing.py on training "
                  "images; predict and evaluate use it unless told otherwise; the values under "
                  "`by_kind` replace the others for images of that kind, judged per image as "
                  "`nucleiseg eda` does: `histology` is any colour image, e.g. H&E; options "
                  "given on the command line win for every kind):", "", "```json",
                  json.dumps(record["postprocessing"], indent=2), "```"]
    if "stain_reference" in record:
        lines += ["", "Stain reference (colour images are matched to it before the model, "
                  "Reinhard's transfer in CIELAB: nucleiseg.algorithms.stain; "
                  "`--no-stain-normalisation` turns it off):", "", "```json",
                  json.dumps(record["stain_reference"], indent=2), "```"]
    if "evaluation" in record:
        lines += ["", "Validation (`nucleiseg evaluate`):", "", "```json",
                  json.dumps(record["evaluation"], indent=2), "```"]
    (path.parent / ("MODEL_HE.md" if args.he else "MODEL.md")).write_text("\n".join(lines) + "\n")
    print(f"shipped {path} ({path.stat().st_size / 2**20:.1f} MB)")


DATA_CREDITS = {
    "dsb-colour-train": "the colour images on the general model's training side of DSB 2018 "
    "stage 1 (BBBC038, Caicedo et al., Nature Methods 2019; links made by "
    "scripts/colour_subset.py), CC0.",
    "dsb2018-stage1-train": "DSB 2018 stage 1 training images (BBBC038, Caicedo et al., Nature "
    "Methods 2019), CC0.",
    "tnbc2018": "TNBC, 50 H&E tiles at 40x of 11 breast-cancer patients: Naylor P., Laé M., "
    "Reyal F., Walter T., \"Segmentation of Nuclei in Histopathology Images by Deep Regression "
    "of the Distance Map\", IEEE TMI 38(2), 2019; doi:10.5281/zenodo.1175282; CC BY 4.0.",
}


def data_folders(record: dict) -> list[Path]:
    data = record["data"]
    return [Path(d) for d in (data if isinstance(data, list) else [data])]


def recorded_split(record: dict) -> dict:
    """split.json's content, remade from a model's record (its images' kinds read again)."""
    from nucleiseg.algorithms.preprocess import image_kind

    names = set(record["split"]["train"]) | set(record["split"]["val"])
    kinds = {}
    for folder in data_folders(record):
        samples, _ = find_samples(folder, skip_bad=True)
        wanted = [s for s in samples if s.name in names]
        kinds.update({sample.name: image_kind(image)
                      for sample, image, _ in load_samples(wanted, skip_bad=True)[0]})
    command = shlex.split(record.get("command") or "")
    grouped_by = (command[command.index("--group-pattern") + 1]
                  if "--group-pattern" in command else None)
    return {**record["split"], "seed": record["config"]["seed"], "kinds": kinds,
            "grouped_by": grouped_by}


def stain_reference(record: dict, folder: Path) -> dict:
    """The stain reference of the colour images of `folder` on the record's training side."""
    from nucleiseg.algorithms.stain import is_colour, reference_from

    samples, _ = find_samples(folder, skip_bad=True)
    chosen = [s for s in samples if s.name in set(record["split"]["train"])]
    images = [image for _, image, _ in load_samples(chosen, skip_bad=True)[0]
              if is_colour(image)]
    if not images:
        raise SystemExit(f"{folder}: no colour training images for a stain reference")
    return reference_from(images).as_record(
        f"{len(images)} colour training images of {folder.name} (mean of their per-image "
        "CIELAB mean and standard deviation)")


def training_labels(record: dict) -> list:
    """The label images of the record's training split, read from its data folders."""
    chosen = []
    for folder in data_folders(record):
        samples, _ = find_samples(folder, skip_bad=True)
        chosen += [s for s in samples if s.name in set(record["split"]["train"])]
    return [labels for _, _, labels in load_samples(chosen, skip_bad=True)[0]]


def recipe_lines(record: dict) -> list[str]:
    """The commands that made the model, first to last (fine-tuning starts from the one
    before)."""
    commands, step = [], record
    while step:
        commands.append(step.get("command") or "(not recorded)")
        step = step.get("init_model")
    if len(commands) == 1:
        return ["Command:", "", "```", commands[0], "```", ""]
    lines = [f"Commands (each of the {len(commands)} runs starts from the model of the one "
             "before, `--init-model`):", "", "```"]
    return lines + commands[::-1] + ["```", ""]


if __name__ == "__main__":
    main()

"""The `nucleiseg` command: one parser, a few lines per subcommand over library functions.

TensorFlow is imported only after the arguments are parsed, so --help is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from nucleiseg import __version__
from nucleiseg.algorithms.instances import InstanceOptions, instance_options_from
from nucleiseg.config import (
    ENCODER_WEIGHTS,
    FINE_TUNE_LEARNING_RATE,
    LR_SCHEDULES,
    MONITORS,
    SAMPLINGS,
    TARGETS,
    TrainConfig,
    check_image_size,
)
from nucleiseg.errors import NucleisegError, UsageError
from nucleiseg.inference.engines import TRAIN_EXTRA, import_keras_quietly, lacks_tensorflow
from nucleiseg.inference.predict import PredictOptions, options_for
from nucleiseg.inference.predict import parse_diameter as diameter_of
from nucleiseg.io.images import MAX_PIXELS
from nucleiseg.io.microscopy import (
    PLANE_MODES,
    ReadOptions,
    parse_cells,
    parse_channel,
    parse_channel_list,
)
from nucleiseg.io.runfiles import DISK_FULL
from nucleiseg.io.wholeslide import BLOCKWISE_PIXELS

DEFAULTS = TrainConfig()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def argument(parse):
    """`parse` for argparse: its ValueError's message as the usage error."""
    def parsed(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parsed.__name__ = parse.__name__
    return parsed


def parse_diameter(text: str) -> float | str:
    """--diameter: "auto" or a positive number of pixels (inference.predict.parse_diameter)."""
    try:
        return diameter_of(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number of pixels, "
                                         f"got {text!r}") from None


def parse_split_levels(text: str) -> tuple[float, ...]:
    """--split-levels: "0.8,0.9" -> (0.8, 0.9); "none" -> ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        levels = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected probabilities like 0.8,0.9 or none; got {text!r}") from None
    if not all(0 < level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"levels must lie between 0 and 1; got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nucleiseg", description="Find cell nuclei in microscopy images.")
    parser.add_argument("--version", action="version", version=f"nucleiseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    eda = commands.add_parser("eda", help="statistics and a grid of sample images with masks")
    eda.add_argument("--data", type=Path, required=True, help="labelled data folder")
    eda.add_argument("--out", type=Path, required=True, help="PNG file for the grid")
    eda.add_argument("--count", type=int, default=8, help="images in the grid (default 8)")
    eda.add_argument("--skip-bad", action="store_true", help="skip unusable samples, list them")
    add_file_options(eda)

    train = commands.add_parser("train", help="train a model; writes a run directory")
    train.add_argument("--data", type=Path, action="append", metavar="FOLDER",
                       help="labelled data folder (default: bundled sample); repeat to train "
                       "on several, each split on its own and sampled in balance")
    train.add_argument("--group-pattern", metavar="REGEX",
                       help="images whose names share this pattern's match stay on one side of "
                       "the split, e.g. '^[^_]+' holds out whole patients named '<patient>_<n>'")
    train.add_argument("--out", type=Path, help="new run directory (default: runs/<time>)")
    train.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    train.add_argument("--image-size", type=int, default=DEFAULTS.image_size,
                       help="training size, a multiple of 32 (default %(default)s)")
    train.add_argument("--steps-per-epoch", type=int,
                       help="training batches per epoch (default: one pass over the images)")
    train.add_argument("--sampling", choices=SAMPLINGS, default=DEFAULTS.sampling,
                       help="resize whole images to --image-size, or take random native-"
                       "resolution crops of --image-size (default %(default)s)")
    train.add_argument("--target", choices=tuple(TARGETS), default=DEFAULTS.target,
                       help="binary: background/nucleus; boundary: background/interior/boundary, "
                       "so touching nuclei can be separated (default %(default)s)")
    train.add_argument("--boundary-weight", type=float, default=DEFAULTS.boundary_weight,
                       help="loss weight of the boundary class (default %(default)s)")
    train.add_argument("--contact-weight", type=float, default=DEFAULTS.contact_weight,
                       help="with --sampling crops: loss weight of pixels within 2 px of two "
                       "different nuclei, where touching nuclei must be split (default "
                       "%(default)s: no extra weight)")
    train.add_argument("--pale-weight", type=float, default=DEFAULTS.pale_weight,
                       help="with --sampling crops: loss weight of the paler half of the nuclei "
                       "in a colour (H&E) crop, by haematoxylin (default %(default)s: no extra "
                       "weight)")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                       help="images per training step, split among the --devices "
                       "(default %(default)s)")
    train.add_argument("--devices", type=int, default=DEFAULTS.devices, metavar="N",
                       help="train on N devices: the first N GPUs, or without GPUs N logical "
                       "CPU devices (for testing); --batch-size must be a multiple of N "
                       "(default %(default)s)")
    train.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=DEFAULTS.lr_schedule)
    train.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction)
    train.add_argument("--seed", type=int, default=DEFAULTS.seed)
    train.add_argument("--encoder-weights", choices=ENCODER_WEIGHTS,
                       default=DEFAULTS.encoder_weights,
                       help="imagenet downloads through Keras (needs internet once)")
    train.add_argument("--freeze-encoder", action="store_true",
                       help="keep the encoder fixed (only with --encoder-weights imagenet)")
    train.add_argument("--freeze-batchnorm", action="store_true",
                       help="keep every BatchNorm layer's statistics and scales (fine-tuning on "
                       "a few images: forgets less of what the starting model knew)")
    train.add_argument("--encoder-alpha", type=float, default=DEFAULTS.encoder_alpha,
                       help="MobileNetV2 width multiplier (default %(default)s)")
    train.add_argument("--decoder-filters", type=_int_list,
                       default=DEFAULTS.decoder_filters, help="default 512,256,128,64")
    train.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    train.add_argument("--bn-momentum", type=float, default=DEFAULTS.bn_momentum,
                       help="encoder BatchNorm momentum (Keras default 0.999 fails from scratch)")
    train.add_argument("--no-augment", action="store_true", help="no random flips/rotations")
    train.add_argument("--zoom-augment", type=float, default=DEFAULTS.zoom_augment,
                       metavar="FACTOR", help="with --sampling crops: zoom each crop by a random "
                       "factor between 1/FACTOR and FACTOR (default %(default)s: off)")
    train.add_argument("--intensity-augment", action="store_true",
                       help="with --sampling crops: random stain gain, contrast, brightness, "
                       "gamma and inversion of each crop")
    train.add_argument("--stain-augment", action="store_true",
                       help="with --sampling crops: random haematoxylin and eosin amounts of "
                       "each colour crop (other stainings and scanners)")
    train.add_argument("--data-shares", type=_float_list, default=None, metavar="A,B,...",
                       help="with several --data folders and --sampling crops: the share of "
                       "the crops each folder gets, in --data order (e.g. 1,1: half each; "
                       "default: balanced by image kind and folder)")
    train.add_argument("--blur-noise-augment", action="store_true",
                       help="with --sampling crops: random Gaussian blur and noise")
    train.add_argument("--he-render-augment", action="store_true",
                       help="with --sampling crops: draw 30%% of the grey (fluorescence) crops "
                       "as H&E-stained tissue, with random stain colours and amounts")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic TensorFlow ops: the same --seed gives the same "
                       "weights on CPU")
    train.add_argument("--monitor", choices=MONITORS, default=DEFAULTS.early_stopping_monitor,
                       help="early stopping and best-checkpoint metric (default %(default)s)")
    train.add_argument("--patience", type=int, default=DEFAULTS.early_stopping_patience)
    train.add_argument("--warmup-steps", type=int, default=DEFAULTS.early_stopping_warmup_steps,
                       help="training steps before early stopping may stop (default %(default)s)")
    train.add_argument("--skip-bad", action="store_true", help="skip unusable samples, list them")
    train.add_argument("--init-model", type=Path, metavar="MODEL",
                       help="start from this model's weights: fine-tuning. 'bundled' is the "
                       "general pretrained model, 'bundled-he' the H&E one; its architecture "
                       "and augmentations are taken from the model's record unless given "
                       "here; learning rate 5e-5 unless given")
    train.add_argument("--minutes", type=float, metavar="M",
                       help="time budget: stop after the last epoch that ends within M minutes "
                       "of training (a resumed run counts its earlier sessions); the best epoch "
                       "is kept")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue an interrupted run from its last completed epoch, with "
                       "its own configuration, data and split (no other options)")
    add_file_options(train)

    evaluate = commands.add_parser("evaluate", help="metrics of a model on a labelled folder")
    evaluate.add_argument("--model", type=Path,
                          help="a model.keras file, or bundled-general / bundled-he: one "
                          "bundled model on every image (default: the bundled models as "
                          "predict runs them)")
    evaluate.add_argument("--data", type=Path,
                          help="labelled data folder (default: the bundled test sample)")
    evaluate.add_argument("--classical", action="store_true",
                          help="evaluate the classical Otsu + watershed baseline instead of a "
                          "model (with --model, only to read its --split)")
    evaluate.add_argument("--split", choices=("all", "val", "train"), default="all",
                          help="only the model's own validation (or training) images")
    evaluate.add_argument("--json", action="store_true", help="print the full report as JSON")
    evaluate.add_argument("--figure", type=Path,
                          help="PNG of input / true / predicted for a few images")
    evaluate.add_argument("--skip-bad", action="store_true",
                          help="skip unusable samples, list them")
    add_prediction_options(evaluate)
    add_file_options(evaluate)

    predict = commands.add_parser("predict", help="nucleus masks and overlays for images")
    predict.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                         help="image files or folders")
    predict.add_argument("--model", type=Path,
                         help="a model file (.keras, .onnx, .tflite), or bundled-general / "
                         "bundled-he: one bundled model on every image (default: the bundled "
                         "models, colour (H&E) images on the H&E one, the others on the "
                         "general one)")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--resume", action="store_true",
                         help="keep images whose outputs exist (an interrupted run) and do "
                         "the rest; the CSV files cover all images")
    predict.add_argument("--engine", choices=("auto", "keras", "onnx", "onnx-int8", "tflite"),
                         default="auto",
                         help="what runs the model: auto = ONNX Runtime when installed and an "
                         "up-to-date export lies beside the model (the bundled one has them; "
                         "int8 first), else Keras (default %(default)s)")
    predict.add_argument("--dask", metavar="ADDRESS|local:N",
                         help="segment on a Dask cluster: a running `dask scheduler`'s address "
                         "(tcp://host:8786; inputs and --out on a filesystem the workers share), "
                         "or local:N for N worker processes here; the outputs are the same "
                         "(needs pip install 'nucleiseg[dask]')")
    add_prediction_options(predict)
    add_file_options(predict, stacks=True)
    add_cell_options(predict)
    add_outline_options(predict)
    add_running_options(predict)

    export = commands.add_parser("export", help="export a model as SavedModel, ONNX or TFLite, "
                                 "or as a bioimage.io model package")
    export.add_argument("--model", type=Path,
                        help="a model.keras file, or bundled-he (default: the bundled general "
                        "model)")
    export.add_argument("--format", required=True,
                        choices=("savedmodel", "onnx", "onnx-int8", "tflite", "bioimageio"),
                        help="onnx-int8: quantised to int8 for fast CPU inference; "
                        "bioimageio: a bioimage.io model package (.zip) for the model zoo, "
                        "deepImageJ, ilastik, QuPath")
    export.add_argument("--calibration", type=Path, metavar="FOLDER",
                        help="images to calibrate onnx-int8 on (default: the bundled sample)")
    export.add_argument("--out", type=Path, required=True,
                        help="output file (.onnx, .tflite, .zip) or folder (savedmodel); put "
                        "an .onnx or .tflite file beside the .keras file with the same name for "
                        "predict --engine")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    return parser


def add_prediction_options(parser) -> None:
    defaults, instance_defaults = PredictOptions(), InstanceOptions()
    group = parser.add_argument_group("prediction")
    group.add_argument("--tile", type=int, default=defaults.tile,
                       help="largest tile side for native-resolution models; tiles are fitted to "
                       "the image, a smaller one is one tile (default %(default)s)")
    group.add_argument("--overlap", type=int, default=defaults.overlap,
                       help="overlap of neighbouring tiles in pixels (default %(default)s)")
    group.add_argument("--diameter", type=parse_diameter,
                       help="typical nucleus diameter in pixels, or auto: estimated per image, "
                       "which is then resized so its nuclei have the size the model was "
                       "trained on (default auto, when the model records that size)")
    group.add_argument("--scale", type=float,
                       help="resize every image by this factor instead (<1 for nuclei larger, "
                       ">1 for nuclei smaller than in training); replaces --diameter")
    group.add_argument("--tta", type=int, choices=(1, 4, 8),
                       help="test-time augmentation: average over 1 (none), 4 (flips) or 8 "
                       "(flips and rotations) views (default: 1, but 4 for colour (H&E) images "
                       "read whole on the bundled models)")
    # Post-processing: each left out falls back to the model's tuned value, else the default.
    for flag, kind, what in (
            ("--min-size", int, "remove nuclei smaller than this many pixels"),
            ("--foreground-threshold", float, "nucleus probability threshold"),
            ("--marker-threshold", float, "interior probability that seeds a nucleus"),
            ("--split-levels", parse_split_levels, "higher interior probabilities at which one "
             "seed may split into several, for touching nuclei the model joined (P,P or none)"),
            ("--min-split-size", int, "pixels each part of a split seed needs"),
            ("--min-confidence", float,
             "remove nuclei whose mean nucleus probability is below this")):
        default = getattr(instance_defaults, flag[2:].replace("-", "_"))
        if isinstance(default, tuple):
            default = ",".join(map(str, default)) or "none"
        group.add_argument(flag, type=kind,
                           help=f"{what} (default: the model's tuned value, else {default})")
    group.add_argument("--no-fill-holes", action="store_true", help="keep holes in nuclei")
    group.add_argument("--no-stain-normalisation", action="store_true",
                       help="give colour (H&E) images to the model as they are, not matched "
                       "to the stain of its H&E training images (when its record has one)")


def add_file_options(parser, stacks: bool = False) -> None:
    """--channel (all commands that read images); --planes and --pixel-size (predict)."""
    group = parser.add_argument_group("microscopy files")
    group.add_argument("--channel", type=parse_channel, metavar="N|NAME",
                       help="the nuclear channel of multi-channel images: its index (from 0) "
                       "or its name in the OME metadata; needed for every image of 2 or more "
                       "channels that is not 8-bit RGB(A)")
    if not stacks:
        return
    group.add_argument("--planes", choices=PLANE_MODES, default="each",
                       help="z-stacks and time series: segment each 2-D plane (one label stack "
                       "per file), a max or mean projection, or (stitch, z-stacks) each plane "
                       "linked into 3-D nuclei: one ZYX label image and one row per 3-D "
                       "nucleus (default %(default)s)")
    group.add_argument("--pixel-size", type=float, metavar="MICRONS",
                       help="pixel size in µm, for measurements in µm (default: from the OME or "
                       "ImageJ metadata, when the file has it)")
    group.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="PIXELS",
                       help="refuse files whose header claims more pixels per plane (a damaged "
                       "file or a decompression bomb; default %(default)s = 16384²)")


def add_running_options(parser) -> None:
    """predict: how the run uses the machine (the outputs are the same either way)."""
    group = parser.add_argument_group("running")
    group.add_argument("--threads", type=int, metavar="N",
                       help="threads for ONNX Runtime and TFLite (default: every core this "
                       "process may use; a Dask worker: its own thread count)")
    group.add_argument("--no-overlap", action="store_true",
                       help="segment images strictly one after the other (default: the next "
                       "image is read and separated while the model runs, where two cores or "
                       "more may run)")
    group.add_argument("--blockwise-pixels", type=int, default=BLOCKWISE_PIXELS,
                       metavar="PIXELS",
                       help="segment tiled TIFFs with more pixels block by block, in bounded "
                       "memory (default %(default)s = 8192²; OME-Zarr and SVS always are)")


def add_cell_options(parser) -> None:
    """--cells and --measure-channels (predict): cells around the nuclei, and intensities of
    the image's channels."""
    group = parser.add_argument_group("cells and channels")
    group.add_argument("--cells", type=argument(parse_cells),
                       metavar="DISTANCE|channel:NAME[:MAXDIST]",
                       help="also write <stem>_cells.tif (the cell of each nucleus, with its id) "
                       "and cell_area columns: grow each nucleus by up to DISTANCE without "
                       "overlapping its neighbours, or within the stain of a cytoplasm "
                       "channel (its index or OME name) up to MAXDIST (default 30 pixels); "
                       "distances in µm when the pixel size is known, else pixels")
    group.add_argument("--measure-channels", type=argument(parse_channel_list), metavar="all|LIST",
                       help="mean, median and integrated intensity per nucleus of these "
                       "channels of the original image (all, or indices and names separated "
                       "by commas), in columns named after the channels; with --cells also "
                       "per cell and cytoplasm")


def add_outline_options(parser) -> None:
    """--geojson and --imagej-rois (predict): each nucleus's outline for QuPath and Fiji."""
    group = parser.add_argument_group("outlines for QuPath and Fiji")
    group.add_argument("--geojson", action="store_true",
                       help="also write <stem>.geojson: one polygon per nucleus along its pixel "
                       "edges, with its measurements (QuPath: File > Import objects from file)")
    group.add_argument("--imagej-rois", action="store_true",
                       help="also write <stem>_rois.zip: one ImageJ ROI per nucleus, named by "
                       "its label (Fiji: ROI Manager > More > Open)")


def outline_exports(args) -> tuple[str, ...]:
    return tuple(name for name, wanted in (("geojson", args.geojson),
                                           ("imagej-rois", args.imagej_rois)) if wanted)


def read_options(args) -> ReadOptions:
    if args.pixel_size is not None and not 0 < args.pixel_size < float("inf"):
        raise UsageError(f"--pixel-size must be a positive number of µm; got {args.pixel_size}")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1; got {args.max_pixels}")
    return ReadOptions(args.channel, args.planes, args.pixel_size, args.max_pixels,
                       cells=args.cells, measure_channels=args.measure_channels)


def prediction_options(args, record: dict | None):
    """PredictOptions and InstanceOptions from the command line, the model's tuned
    post-processing filling in what the command line leaves out."""
    check_image_size(args.tile)
    if not 0 <= args.overlap < args.tile:
        raise UsageError(f"--overlap must be between 0 and the tile size; got {args.overlap}")
    if args.scale is not None and args.scale <= 0:
        raise UsageError(f"--scale must be positive; got {args.scale}")
    if args.scale is not None and args.diameter is not None:
        raise UsageError("--scale and --diameter exclude each other: --scale resizes every "
                         "image by one factor, --diameter decides the factor per image")
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise UsageError(f"--min-confidence must be between 0 and 1; got {args.min_confidence}")
    if args.min_split_size is not None and args.min_split_size < 1:
        raise UsageError(f"--min-split-size must be at least 1; got {args.min_split_size}")
    sizing = {"diameter": None, "scale": args.scale} if args.scale is not None else (
        {"diameter": args.diameter} if args.diameter is not None else {})
    tta = {} if args.tta is None else {"tta": args.tta, "colour_tta": args.tta}
    return (options_for(record, stain=not args.no_stain_normalisation, tile=args.tile,
                        overlap=args.overlap, **tta, **sizing),
            instance_options_from(record, foreground_threshold=args.foreground_threshold,
                                  marker_threshold=args.marker_threshold, min_size=args.min_size,
                                  split_levels=args.split_levels,
                                  min_split_size=args.min_split_size,
                                  min_confidence=args.min_confidence,
                                  fill_holes=False if args.no_fill_holes else None))


def run_eda(args) -> int:
    from nucleiseg.eda import describe, format_description, sample_figure
    from nucleiseg.render import require_plots

    require_plots("nucleiseg eda --out")
    stats, loaded = describe(args.data, skip_bad=args.skip_bad, channel=args.channel)
    print(format_description(stats))
    sample_figure(loaded, args.out, args.count)
    print(f"grid written to {args.out}")
    return 0




def run_train(args) -> int:
    verbose = 1 if sys.stdout.isatty() else 2  # a progress bar, or one line per epoch in logs
    if args.resume is not None:
        others = [a for a in args.argv if a.startswith("--") and a.split("=")[0]
                  not in ("--resume", "--debug")]
        if others:
            raise UsageError(f"--resume continues a run with its own configuration; drop "
                             f"{', '.join(others)}")
        from nucleiseg.training.fit import resume

        run_dir, record = resume(args.resume, verbose=verbose)
        return report_training(run_dir, record)
    fields = dict(
        image_size=args.image_size, sampling=args.sampling, target=args.target,
        boundary_weight=args.boundary_weight, contact_weight=args.contact_weight,
        pale_weight=args.pale_weight, lr_schedule=args.lr_schedule,
        encoder_weights=args.encoder_weights,
        freeze_encoder=args.freeze_encoder, freeze_batchnorm=args.freeze_batchnorm,
        encoder_alpha=args.encoder_alpha,
        decoder_filters=args.decoder_filters, dropout=args.dropout,
        bn_momentum=args.bn_momentum, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, devices=args.devices,
        learning_rate=args.learning_rate, val_fraction=args.val_fraction, seed=args.seed,
        deterministic=args.deterministic,
        augment=not args.no_augment, zoom_augment=args.zoom_augment,
        intensity_augment=args.intensity_augment, stain_augment=args.stain_augment,
        blur_noise_augment=args.blur_noise_augment, he_render_augment=args.he_render_augment,
        data_shares=args.data_shares,
        early_stopping_monitor=args.monitor,
        early_stopping_patience=args.patience, early_stopping_warmup_steps=args.warmup_steps,
        minutes=args.minutes,
    )
    from nucleiseg.training.fit import train

    init_model = args.init_model
    if init_model is not None:
        from nucleiseg.config import recipe_fields
        from nucleiseg.model.saving import read_record, resolve_model_path

        init_model = resolve_model_path(init_model)  # a file, or a bundled model's name
        given = {a.split("=")[0] for a in args.argv if a.startswith("--")}
        # checked as one: e.g. --stain-augment given, --sampling crops from the record
        fields.update(recipe_fields(read_record(init_model).get("config", {}), given))
        if "--learning-rate" not in given:  # a fine-tune moves the weights less
            fields["learning_rate"] = FINE_TUNE_LEARNING_RATE
    config = TrainConfig(**fields)
    command = shlex.join(["nucleiseg", *args.argv])
    run_dir, record = train(config, args.data, args.out, skip_bad=args.skip_bad, verbose=verbose,
                            command=command, init_model=init_model, channel=args.channel,
                            group_pattern=args.group_pattern)
    return report_training(run_dir, record)


def training_devices(args) -> int:
    """How many devices `nucleiseg train` will use (a resumed run: its config.json's), known
    before TensorFlow is imported."""
    if args.command != "train":
        return 1
    if args.resume is None:
        return args.devices
    try:
        return int(json.loads((args.resume / "config.json").read_text()).get("devices", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1  # resume() says what is wrong with the run directory


def report_training(run_dir, record) -> int:
    native = record["metrics"]["validation_native"]
    print(f"validation (native resolution): pixel accuracy {native['pixel_accuracy']:.4f}, "
          f"foreground IoU {native['foreground_iou']:.4f}, Dice {native['dice']:.4f}, "
          f"AP@0.5 {native['ap_50']:.4f}, DSB score {native['dsb_score']:.4f}")
    if record["metrics"].get("stopped"):
        print(f"stopped: {record['metrics']['stopped']}")
    print(f"model: {run_dir / 'model.keras'}")
    return 0


def run_evaluate(args) -> int:
    from nucleiseg.evaluation import evaluate_model, format_report
    from nucleiseg.io.images import bundled_sample
    from nucleiseg.model.saving import read_record, resolve_model_path

    data = args.data if args.data is not None else bundled_sample("test")
    if args.figure:
        from nucleiseg.render import require_plots

        require_plots("--figure")
    record = None if args.classical else read_record(resolve_model_path(args.model))
    options, instance_options = prediction_options(args, record)
    report = evaluate_model(args.model, data, args.figure, skip_bad=args.skip_bad,
                            split=args.split, options=options, instance_options=instance_options,
                            classical=args.classical, channel=args.channel)
    report["command"] = shlex.join(["nucleiseg", *args.argv])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        what = "classical Otsu + watershed" if args.classical else (args.model or "bundled model")
        print(f"{what} on {report['data']} ({args.split} images)")
        print(format_report(report))
        for line in report["skipped"]:
            print(f"skipped {line}")
        if args.figure:
            print(f"figure written to {args.figure}")
    return 0


def run_predict(args) -> int:
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.pipeline.run import predict_files

    if args.dask is not None:
        from nucleiseg.integrations.dask import parse_dask, require_distributed

        parse_dask(args.dask)
        require_distributed()
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1; got {args.threads}")
    if args.blockwise_pixels < 0:
        raise UsageError(f"--blockwise-pixels must not be negative; got {args.blockwise_pixels}")
    model, record = load_engine(args.model, args.engine, args.threads)
    options, instance_options = prediction_options(args, record)
    colour_tta = (f", {options.colour_tta} TTA views unless read block by block"
                  if options.colour_tta > options.tta else "")
    print(f"engine: {model.name}" + (f" (colour images: the bundled H&E model{colour_tta})"
                                     if model.colour is not None else ""))
    reading, exports = read_options(args), outline_exports(args)
    if args.dask is None:
        results = predict_files(model, record, args.inputs, args.out, args.overwrite, options,
                                instance_options, resume=args.resume, read_options=reading,
                                exports=exports, overlap=False if args.no_overlap else None,
                                blockwise_pixels=args.blockwise_pixels,
                                block_progress=sys.stderr)
    else:
        from nucleiseg.integrations.dask import EngineSpec, connect

        spec = EngineSpec(None if args.model is None else str(args.model.absolute()),
                          args.engine, args.threads)
        with connect(args.dask, spec) as runner:
            results = predict_files(model, record, args.inputs, args.out, args.overwrite,
                                    options, instance_options, resume=args.resume,
                                    read_options=reading, exports=exports, runner=runner,
                                    blockwise_pixels=args.blockwise_pixels,
                                    block_progress=sys.stderr)
    failed = [r for r in results if r.error]
    resumed = sum(r.resumed for r in results)
    kept = f", {resumed} of them from an earlier run" if resumed else ""
    print(f"{len(results) - len(failed)} images segmented into {args.out}{kept} "
          f"({sum(r.nuclei for r in results)} nuclei; measurements.csv, summary.csv)")
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
        for result in failed:
            print(f"  {result.error}", file=sys.stderr)
        return 1
    return 0


def run_export(args) -> int:
    from nucleiseg.export.exporter import export_model

    export_model(args.model, args.format, args.out, overwrite=args.overwrite,
                 calibration=args.calibration)
    return 0


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


COMMANDS = {"eda": run_eda, "train": run_train, "evaluate": run_evaluate, "predict": run_predict,
            "export": run_export}
NEEDS_TENSORFLOW = ("train", "evaluate", "export")  # predict imports it only for --engine keras


def missing_tensorflow(args) -> str:
    """The one line for a command that needs TensorFlow and Keras where the 'train' extra is
    not installed (a light install: predict with the bundled model or .onnx exports only)."""
    if args.command == "train":
        return f"training needs TensorFlow and Keras: {TRAIN_EXTRA}"
    if args.command == "evaluate":
        return f"evaluate runs .keras models with TensorFlow and Keras: {TRAIN_EXTRA}"
    if args.command == "export":
        return "export needs TensorFlow and Keras: pip install 'nucleiseg[train,export]'"
    engine = getattr(args, "engine", None)
    if engine == "tflite" or str(getattr(args, "model", None) or "").endswith(".tflite"):
        return ("running a .tflite model needs ai-edge-litert (pip install "
                f"'nucleiseg[export]') or TensorFlow ({TRAIN_EXTRA})")
    if engine == "keras":
        return (f"--engine keras needs TensorFlow and Keras: {TRAIN_EXTRA} (without them, "
                "predict runs the bundled model and .onnx exports on ONNX Runtime)")
    return (f"this model has no up-to-date ONNX export beside it, so it runs on Keras, which "
            f"needs TensorFlow: {TRAIN_EXTRA} (or predict with an .onnx export of it)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # `kill` stops as cleanly as Ctrl-C
    if training_devices(args) > 1:  # logical CPU devices need it (train.check_onednn_off)
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        if args.command in NEEDS_TENSORFLOW and not args.debug:
            import_keras_quietly()
        return COMMANDS[args.command](args)
    except ModuleNotFoundError as error:  # TensorFlow or Keras, in a light install
        if args.debug or not lacks_tensorflow(error):
            raise
        print(f"nucleiseg {args.command}: error: {missing_tensorflow(args)}", file=sys.stderr)
        return UsageError.exit_code
    except NucleisegError as error:
        if args.debug:
            raise
        print(f"nucleiseg {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # e.g. an output folder that cannot be written
        if args.debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        then = ""
        if error.errno in DISK_FULL and args.command == "predict":
            then = ("; make room, then run the same command with --resume: it keeps the images "
                    "done and does the rest")
        print(f"nucleiseg {args.command}: error: {where}{error.strerror or error}{then}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nucleiseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print(f"nucleiseg {args.command}: error: out of memory", file=sys.stderr)
        return 1

"""`nucleiseg export --format bioimageio`: a bioimage.io model package (one .zip).

The package holds `rdf.yaml` (bioimage.io model description, spec 0.5), the ONNX export (the
weights consumers such as ilastik and deepImageJ run) and the `.keras` model it came from
(`keras_v3` weights, the ONNX export's parent), a test input and the ONNX output on it, a
cover image, README.md and the licence (MIT). Its input preprocessing is stated in the
description as bioimage.io steps that reproduce algorithms.preprocess.normalize_image; its output
is the model's per-pixel class logits. Splitting them into nuclei (nucleiseg's watershed,
algorithms.instances) is not expressible in the spec and stays nucleiseg's: the description
says so.

Before it is kept, the package is loaded back and validated by bioimageio.spec and its test
(bioimageio.core: the test input, preprocessed as described, through every weights format,
compared with the test output; then other input sizes) must pass. Nothing in the description
is a URL, so neither needs the network.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from pathlib import Path

import numpy as np

from nucleiseg.errors import UsageError

INSTALL = "pip install 'nucleiseg[export,bioimageio]'"
CLASS_NAMES = {2: ("background", "nucleus"), 3: ("background", "interior", "boundary")}
CLASS_COLOURS = {"background": (0, 0, 0), "nucleus": (255, 215, 0), "interior": (255, 215, 0),
                 "boundary": (255, 0, 255)}
TEST_IMAGE = "histology_c0152b1a.png"  # colour: checks the percentiles are over all channels
TEST_IMAGE_ID = "c0152b1a260e71f9823d17f4fbb4bf7020d5dce62b4a12b3099c1c8e52a1c43a"  # in DSB 2018
COVER_IMAGE = "fluorescence_df9a4212.png"
DSB_CITATION = ("Caicedo JC, Goodman A, Karhohs KW, et al. Nucleus segmentation across imaging "
                "experiments: the 2018 Data Science Bowl. Nature Methods 16, 1247-1253 (2019).")
DSB_DOI = "10.1038/s41592-019-0612-7"
TNBC_CITATION = ("Naylor P, Laé M, Reyal F, Walter T. Segmentation of nuclei in histopathology "
                 "images by deep regression of the distance map. IEEE Trans Med Imaging. "
                 "2019;38(2):448-459.")
TNBC_DOI = "10.1109/TMI.2018.2865709"
TNBC_DATA_DOI = "10.5281/zenodo.1175282"
POSTPROCESSING_NOTE = (
    "Nuclei as separate objects come from nucleiseg's post-processing (a watershed on the class "
    "probabilities), which bioimage.io cannot describe: pip install nucleiseg; nucleiseg predict.")
TAGS = ("nuclei", "2d", "unet", "tensorflow", "onnx", "keras", "semantic-segmentation",
        "fluorescence-light-microscopy", "transmission-light-microscopy", "dsb2018", "nucleiseg")


def require_bioimageio() -> None:
    """Refuse early, before the model is loaded, when the packages are missing or do not
    import (a clash with another library's version: one line, see bioimageio_errors)."""
    try:
        with bioimageio_errors("bioimageio", "importing bioimageio"):
            import bioimageio.core  # noqa: F401
            import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"bioimage.io export needs bioimageio.spec and bioimageio.core "
                         f"({exc}): {INSTALL}") from None


# bioimageio.spec and .core are pydantic models throughout: a pydantic release they were not
# made for breaks them inside (pydantic 2.14 with bioimageio.spec 0.5.12.0: docs/design.md)
BIOIMAGEIO_LIBRARIES = ("bioimageio.spec", "bioimageio.core", "pydantic", "pydantic-core")


def library_versions() -> str:
    """'bioimageio.spec 0.5.12.0, bioimageio.core 0.11.0, pydantic 2.13.5, ...'."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    return ", ".join(f"{name} {installed(name)}" for name in BIOIMAGEIO_LIBRARIES)


@contextlib.contextmanager
def bioimageio_errors(out, step: str):
    """An unexpected exception inside the bioimageio libraries becomes one ExportError line
    naming `out`, the step, the libraries' versions and the cause (nucleiseg's own errors, a
    missing module, a full disk and Ctrl-C pass through; --debug shows the traceback)."""
    from nucleiseg.errors import NucleisegError
    from nucleiseg.export.onnx import ExportError

    try:
        yield
    except (NucleisegError, ImportError, OSError, MemoryError):
        raise
    except Exception as exc:
        cause = " ".join(str(exc).split()) or "(no message)"
        if len(cause) > 500:
            cause = cause[:500] + "..."
        raise ExportError(
            f"{out}: bioimageio failed while {step} ({library_versions()}): "
            f"{type(exc).__name__}: {cause}; these versions may not work together: "
            "pip install --upgrade 'nucleiseg[export,bioimageio]' installs the ones nucleiseg "
            "allows (--debug shows the traceback)") from exc


@contextlib.contextmanager
def bioimageio_quiet():
    """bioimageio logs (loguru) every validation step to stderr, and its test of the Keras
    weights draws Keras progress bars and TensorFlow retracing notices: silence them here."""
    import logging

    import keras
    from loguru import logger

    logger.disable("bioimageio")
    tf_logger = logging.getLogger("tensorflow")
    level, interactive = tf_logger.level, keras.config.is_interactive_logging_enabled()
    tf_logger.setLevel(logging.ERROR)
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        logger.enable("bioimageio")
        tf_logger.setLevel(level)
        if interactive:
            keras.config.enable_interactive_logging()


def build_bioimageio(model, record: dict, source: Path, work: Path,
                     out: Path) -> tuple[Path, float]:
    """(the checked package in `work`, largest softmax difference of its ONNX weights from
    Keras). Raises ExportError (naming `out`) when the ONNX weights disagree with Keras, or the
    package does not validate or fails its test."""
    from nucleiseg.algorithms.preprocess import normalize_image
    from nucleiseg.export.onnx import TOLERANCE, ExportError, build_onnx, check_against_keras
    from nucleiseg.inference.engines import onnx_engine

    files = work / "files"
    files.mkdir()
    onnx_path = build_onnx(model, record, files)
    difference = check_against_keras(model, "onnx", onnx_path)
    if difference > TOLERANCE:
        raise ExportError(f"{out}: the ONNX weights differ from the Keras model by "
                          f"{difference:.2g} in probability (tolerance {TOLERANCE})")
    save_inference_model(model, record, files / "model.keras")

    engine = onnx_engine(onnx_path)
    test_image = sample_image(TEST_IMAGE)
    logits = engine.predict_logits(normalize_image(test_image)[None])
    np.save(files / "test_input.npy", test_image.astype(np.float32)[None])
    np.save(files / "test_output.npy", logits.astype(np.float32))
    write_sample_tensors(files, test_image, logits[0])
    cover_image = sample_image(COVER_IMAGE)
    write_cover(files / "cover.png", cover_image, engine.predict_logits(
        normalize_image(cover_image)[None])[0])
    classes = class_names(engine.num_classes)
    (files / "README.md").write_text(readme(record, source, classes, difference),
                                     encoding="utf-8")
    (files / "LICENSE").write_text(MIT_LICENSE, encoding="utf-8")

    # its FAIR notices (no citation, no maintainer) go to stderr
    with bioimageio_errors(out, "describing the model"), bioimageio_quiet():
        descr = describe(record, source, files, classes)
    with bioimageio_errors(out, "writing the package"):
        package = save_package(descr, work / "package.zip")
    with bioimageio_errors(out, "testing the package"):
        check_package(package, out)
    return package, difference


def save_inference_model(model, record: dict, path: Path) -> None:
    """The model without its training state (optimizer, nucleiseg's custom loss and metrics),
    so that plain Keras loads it, as bioimage.io consumers do; the record stays inside."""
    import keras

    from nucleiseg.model.saving import save_model

    inference = keras.Model.from_config(model.get_config())
    inference.set_weights(model.get_weights())
    save_model(inference, path, record)


def sample_image(name: str) -> np.ndarray:
    """An image of the bundled test sample, RGB, cropped to what the model takes."""
    from nucleiseg.algorithms.preprocess import to_rgb
    from nucleiseg.io.images import bundled_sample, read_image

    return crop_to_multiple(to_rgb(read_image(bundled_sample("test") / "images" / name)))


def crop_to_multiple(image: np.ndarray, step: int = 32) -> np.ndarray:
    """The top-left crop whose sides are multiples of `step` (what the model takes)."""
    height, width = (side // step * step for side in image.shape[:2])
    return image[:height, :width]


def class_names(count: int) -> tuple[str, ...]:
    return CLASS_NAMES.get(count, tuple(f"class{i}" for i in range(count)))


def classes_image(logits: np.ndarray) -> np.ndarray:
    """uint8 RGB: each pixel coloured by its most likely class."""
    names = class_names(logits.shape[-1])
    palette = np.array([CLASS_COLOURS.get(name, (128, 128, 128)) for name in names], np.uint8)
    return palette[np.argmax(logits, axis=-1)]


def as_uint8(image: np.ndarray) -> np.ndarray:
    from nucleiseg.algorithms.preprocess import normalize_image

    return np.round(normalize_image(image) * 255).astype(np.uint8)


def write_cover(path: Path, image: np.ndarray, logits: np.ndarray) -> None:
    """Input | predicted classes, side by side (2:1, as bioimage.io recommends)."""
    from PIL import Image

    Image.fromarray(np.concatenate([as_uint8(image), classes_image(logits)], axis=1)).save(path)


def write_sample_tensors(files: Path, image: np.ndarray, logits: np.ndarray) -> None:
    """For people browsing the package: the test image as PNG, its logits as a TIFF."""
    import tifffile
    from PIL import Image

    Image.fromarray(as_uint8(image)).save(files / "sample_input.png")
    tifffile.imwrite(files / "sample_output.tif", logits.astype(np.float32))


def model_name(record: dict, source: Path) -> str:
    """A bioimage.io name (letters, digits, _+- () only, 5 to 64 characters)."""
    from nucleiseg.model.saving import BUNDLED_HE_MODEL, BUNDLED_MODEL

    if source.name == BUNDLED_MODEL:
        return "nucleiseg nuclei U-Net (DSB 2018)"
    if source.name == BUNDLED_HE_MODEL:
        return "nucleiseg nuclei U-Net (HE histology)"
    stem = re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", source.stem).strip("-")[:40]
    return f"nucleiseg U-Net {stem}".strip()


def trained_on_dsb(record: dict) -> bool:  # dsb2018-stage1-train, or a subset of it
    return "dsb" in str(record.get("data", "")).lower()


def trained_on_tnbc(record: dict) -> bool:
    return "tnbc" in str(record.get("data", "")).lower()


def describe(record: dict, source: Path, files: Path, classes: tuple[str, ...]):
    """The bioimage.io model description (spec 0.5) of the files in `files`."""
    import keras
    import onnx
    import tensorflow as tf
    from bioimageio.spec.model import v0_5

    import nucleiseg
    from nucleiseg.algorithms.preprocess import PERCENTILES
    from nucleiseg.export.onnx import ONNX_OPSET

    space = [v0_5.SpaceInputAxis(id=v0_5.AxisId(name), size=v0_5.ParameterizedSize(min=32,
                                                                                 step=32))
             for name in ("y", "x")]
    inputs = v0_5.InputTensorDescr(
        id=v0_5.TensorId("image"),
        description="RGB image (grey images: the one channel repeated 3 times), any intensities",
        axes=[v0_5.BatchAxis(), *space, v0_5.ChannelAxis(
            channel_names=[v0_5.Identifier(name) for name in ("red", "green", "blue")])],
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        test_tensor=v0_5.FileDescr(source=files / "test_input.npy"),
        sample_tensor=v0_5.FileDescr(source=files / "sample_input.png"),
        preprocessing=[
            # algorithms.preprocess.normalize_image: per image, percentiles over all pixels and
            # channels together, mapped to 0 and 1, clipped
            v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
                axes=[v0_5.AxisId(name) for name in ("y", "x", "channel")],
                min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1])),
            v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0)),
        ],
    )
    outputs = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("logits"),
        description="per-pixel class logits (softmax over channel: probabilities); "
                    + ", ".join(classes),
        axes=[v0_5.BatchAxis(),
              *[v0_5.SpaceOutputAxis(id=v0_5.AxisId(name), size=v0_5.SizeReference(
                  tensor_id=v0_5.TensorId("image"), axis_id=v0_5.AxisId(name)))
                for name in ("y", "x")],
              v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name) for name in classes])],
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        test_tensor=v0_5.FileDescr(source=files / "test_output.npy"),
        sample_tensor=v0_5.FileDescr(source=files / "sample_output.tif"),
    )
    author = v0_5.Author(name="nucleiseg developers")
    weights = v0_5.WeightsDescr(
        keras_v3=v0_5.KerasV3WeightsDescr(
            source=files / "model.keras", keras_version=v0_5.Version(keras.__version__),
            backend=("tensorflow", v0_5.Version(tf.__version__)), authors=[author],
            comment="the model as nucleiseg trained it, without its training state (loads "
                    "with plain Keras); its record (training configuration, data split, "
                    "metrics, post-processing) is nucleiseg.json inside the file"),
        onnx=v0_5.OnnxWeightsDescr(
            source=files / "model.onnx", opset_version=ONNX_OPSET, parent="keras_v3",
            authors=[author],
            comment=f"nucleiseg export --format onnx (Keras {keras.__version__} -> tf2onnx, "
                    f"onnx {onnx.__version__}); checked against Keras"),
    )
    cite = [v0_5.CiteEntry(text=DSB_CITATION, doi=v0_5.Doi(DSB_DOI))] if trained_on_dsb(
        record) else []
    if trained_on_tnbc(record):
        cite.append(v0_5.CiteEntry(text=TNBC_CITATION, doi=v0_5.Doi(TNBC_DOI)))
    metrics = (record.get("evaluation") or {}).get("overall") or {}
    summary = (f" On {metrics['images']} held-out images: AP50 {metrics['ap_50']:.2f}, "
               f"foreground IoU {metrics['foreground_iou']:.2f}." if "ap_50" in metrics else "")
    description = (
        f"2-D U-Net for cell nuclei (fluorescence, brightfield, H&E histology) from nucleiseg "
        f"{nucleiseg.__version__}: {len(classes)} classes per pixel ({', '.join(classes)})."
        f"{summary} {POSTPROCESSING_NOTE}")
    config = {"nucleiseg": {key: value for key, value in {
        "version": nucleiseg.__version__,
        "exported_from": record.get("exported_from"),
        "target": (record.get("config") or {}).get("target"),
        "classes": list(classes),
        "postprocessing": record.get("postprocessing"),
        "nucleus_size": record.get("nucleus_size"),
        "note": POSTPROCESSING_NOTE,
    }.items() if value is not None}}
    return v0_5.ModelDescr(
        name=model_name(record, source),
        description=description,
        authors=[author],
        cite=cite,
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=files / "README.md"),
        covers=[v0_5.FileDescr(source=files / "cover.png")],
        attachments=[v0_5.FileDescr(source=files / "LICENSE")],
        tags=list(TAGS),
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        timestamp=v0_5.Datetime(datetime.datetime.now(datetime.timezone.utc)),
        config=v0_5.Config(**config),
    )


def save_package(descr, path: Path) -> Path:
    from bioimageio.spec import save_bioimageio_package

    with bioimageio_quiet():
        return Path(save_bioimageio_package(descr, output_path=path))


def validate_package(path: Path):
    """bioimageio.spec's format validation of a package, offline (every file it names is in
    the zip: their SHA-256 and the test tensors' shapes are checked). Returns the summary."""
    from bioimageio.spec import load_description

    with bioimageio_quiet():
        return load_description(path, perform_io_checks=True).validation_summary


def run_package_test(path: Path):
    """bioimageio.core's test of a package: validation, then the test input through every
    weights format. Returns the validation summary (status 'passed' or 'failed').

    bioimageio.core runs Keras weights with the backend its settings name (default torch, which
    nucleiseg lacks) and writes it to the environment variable KERAS_BACKEND; here it is
    TensorFlow, nucleiseg's, and the variable is put back afterwards."""
    import os

    from bioimageio.core import settings, test_model

    before, backend = os.environ.get("KERAS_BACKEND"), settings.keras_backend
    settings.keras_backend = "tensorflow"
    try:
        with bioimageio_quiet():
            return test_model(path)
    finally:
        settings.keras_backend = backend
        if before is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = before


def check_package(path: Path, out: Path) -> None:
    from nucleiseg.export.onnx import ExportError

    summary = run_package_test(path)
    if summary.status != "passed":
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for detail in summary.details
                  for e in detail.errors]
        message = "; ".join(errors).replace("\n", " ")
        raise ExportError(f"{out}: the bioimage.io package fails its test: {message[:2000]}")


def readme(record: dict, source: Path, classes: tuple[str, ...], difference: float) -> str:
    import nucleiseg
    from nucleiseg.algorithms.preprocess import PERCENTILES

    config = record.get("config") or {}
    split = record.get("split") or {}
    evaluation = record.get("evaluation") or {}
    overall = evaluation.get("overall") or {}
    lines = [
        f"# {model_name(record, source)}", "",
        f"A 2-D U-Net that finds cell nuclei in microscopy images (fluorescence, brightfield, "
        f"H&E histology), made with nucleiseg "
        f"{nucleiseg.__version__}. For every pixel it gives the logits of {len(classes)} "
        f"classes: {', '.join(classes)} (softmax over the channel axis gives probabilities).",
        "",
        "## From these classes to nuclei: nucleiseg's post-processing", "",
        "Separate, labelled nuclei (one number per nucleus) come from nucleiseg's "
        "post-processing, which this package does not contain: a watershed on the class "
        "probabilities, seeded by the nucleus interiors, with the thresholds tuned for this "
        "model. It cannot be expressed in the bioimage.io spec, so programs that run this "
        "package give the per-pixel classes only. For labelled nuclei and their measurements:",
        "", "```bash", "pip install nucleiseg",
        "nucleiseg predict my_images/ --out nuclei/   # the bundled model" if
        source.name == "nuclei_dsb2018.keras" else
        "nucleiseg predict my_images/ --model model.keras --out nuclei/   # model.keras: "
        "in this package",
        "```", "",
        "Post-processing values stored with the model: "
        f"`{json.dumps(record.get('postprocessing'))}`.",
        "",
        "## Input and preprocessing", "",
        "One RGB image, axes batch, y, x, channel (NHWC), float32, height and width multiples "
        "of 32 (pad or crop larger images; nucleiseg tiles them with 512 px tiles overlapping "
        "by 64 px). Grey images: repeat the channel 3 times. Preprocessing, stated in "
        f"`rdf.yaml`: per image, the {ordinal(PERCENTILES[0])} and {ordinal(PERCENTILES[1])} "
        "percentiles "
        "over all pixels and channels together are mapped to 0 and 1 (`scale_range`, axes y, x, "
        "channel), then clipped to [0, 1] (`clip`). This is nucleiseg's own normalisation "
        "(`nucleiseg.algorithms.preprocess.normalize_image`; above 4 megapixels nucleiseg "
        "takes the percentiles on a regular subsample of pixels).", "",
        "## Training", "",
        f"Data: `{record.get('data')}`"
        + (" (2018 Data Science Bowl stage 1 training images, BBBC038; CC0 1.0"
           + ("; TNBC H&E tiles, Naylor et al. 2019, CC BY 4.0" if trained_on_tnbc(record)
              else "") + ")." if trained_on_dsb(record) else ".")
        + (f" Split: {len(split.get('train', []))} training images, "
           f"{len(split.get('val', []))} validation images, never trained on." if split else ""),
        "", f"Command: `{record.get('command')}`", "",
        "Configuration:", "", "```json", json.dumps(config, indent=2), "```", "",
        "## Validation", "",
    ]
    if overall:
        lines += [
            f"`{evaluation.get('command')}`", "",
            "| images | pixel accuracy | foreground IoU | Dice | AP50 | AP75 | DSB score "
            "| F1@0.5 |",
            "|---|---|---|---|---|---|---|---|",
            "| " + " | ".join(
                str(overall.get("images")) if key == "images" else f"{overall.get(key, 0):.3f}"
                for key in ("images", "pixel_accuracy", "foreground_iou", "dice", "ap_50",
                            "ap_75", "dsb_score", "f1_50")) + " |", "",
            "Per image kind:", "", "| kind | images | foreground IoU | AP50 | F1@0.5 |",
            "|---|---|---|---|---|",
            *[f"| {kind} | {row.get('images')} | {row.get('foreground_iou', 0):.3f} | "
              f"{row.get('ap_50', 0):.3f} | {row.get('f1_50', 0):.3f} |"
              for kind, row in (evaluation.get("by_kind") or {}).items()], "",
            "Instance metrics (AP, F1) are of nucleiseg's post-processed nuclei, not of the raw "
            "classes.", "",
        ]
    else:
        lines += ["This model's record holds no held-out evaluation; validate it with "
                  "`nucleiseg evaluate --model model.keras --data <labelled images>`.", ""]
    lines += [
        f"The ONNX weights differ from the Keras model by at most {difference:.1e} in class "
        "probability on test tiles. The test input (`test_input.npy`) is a DSB 2018 histology "
        "image (a crop, from nucleiseg's bundled sample"
        + ("; this model was trained on it" if TEST_IMAGE_ID in split.get("train", []) else "")
        + "); `test_output.npy` is the ONNX output on it after nucleiseg's own normalisation, "
        "so the package's test (bioimageio.core) also checks that the preprocessing stated in "
        "`rdf.yaml` reproduces nucleiseg's.", "",
        "## Licence and citation", "",
        "Weights: MIT (`LICENSE`)."
        + (" Training data: CC0 1.0. When you use this model, please cite the data set:"
           if trained_on_dsb(record) else ""),
    ]
    if trained_on_dsb(record):
        lines += ["", f"> {DSB_CITATION} doi:{DSB_DOI}"]
    if trained_on_tnbc(record):
        lines += ["", "H&E training data: TNBC (CC BY 4.0, data doi:"
                  f"{TNBC_DATA_DOI}); please cite:", "", f"> {TNBC_CITATION} doi:{TNBC_DOI}"]
    return "\n".join(lines) + "\n"


def ordinal(number: float) -> str:
    """1 -> '1st', 99.8 -> '99.8th'."""
    text = f"{number:g}"
    suffix = {"1": "st", "2": "nd", "3": "rd"}.get(text[-1], "th")
    return text + (suffix if "." not in text and not text.endswith(("11", "12", "13"))
                   else "th")


MIT_LICENSE = """MIT License

Copyright (c) nucleiseg developers

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

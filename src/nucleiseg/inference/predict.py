"""Prediction: normalise, predict class probabilities at the image's own size (tiles or a
resize, by how the model was trained), separate the nuclei, write the outputs."""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.instances import (
    InstanceOptions,
    instance_options_from,
    labels_from_probabilities,
    quantise_probabilities,
)
from nucleiseg.algorithms.preprocess import (
    apply_intensity_range,
    intensity_range,
    normalize_image,
    resize_image,
)
from nucleiseg.algorithms.scale import CHECK_COLUMNS, combine_checks
from nucleiseg.errors import DataError, UsageError
from nucleiseg.io.images import CsvStream, find_images, read_planes, write_labels, write_png
from nucleiseg.io.microscopy import ReadOptions, format_pixel_size
from nucleiseg.io.outlines import EXPORTS, export_paths, write_exports


def create_mask(logits: np.ndarray) -> np.ndarray:
    """Per-pixel class = argmax over the last (class) axis (the original's `create_mask`)."""
    return np.argmax(logits, axis=-1).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32, with as few temporaries as possible."""
    out = np.array(logits, dtype=np.float32, copy=True)
    out -= out.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def predict_logits(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Logits for a stack of model-ready images (N, S, S, 3), in inference mode."""
    outputs = [
        np.asarray(model(images[start:start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How to predict: tile size and overlap (native-resolution models), input scale, TTA.

    `diameter` decides the scale per image: None uses `scale` as given; "auto" estimates the
    image's typical nucleus diameter and resizes it to `training_diameter` (the nucleus size
    in the model's record: nucleiseg.algorithms.scale); a number is the diameter in pixels, known.
    """

    tile: int = 512
    overlap: int = 64
    scale: float = 1.0
    tta: int = 1  # 1 (none), 4 (flips) or 8 (flips and 90-degree rotations)
    batch_size: int = 1  # tiles per model call: larger is no faster on CPU, and needs more memory
    diameter: float | str | None = None
    training_diameter: float | None = None

    def __post_init__(self):
        if self.diameter is not None and self.training_diameter is None:
            raise UsageError("--diameter needs the nucleus size the model was trained on, and "
                             "this model's record has none; pass --scale instead")


def options_for(record: dict | None, **values) -> PredictOptions:
    """PredictOptions with the model's training nucleus size from its record; `diameter`
    defaults to "auto" when the record has that size, else to None (fixed `scale`)."""
    training = ((record or {}).get("nucleus_size") or {}).get("median_diameter")
    values.setdefault("diameter", "auto" if training else None)
    return PredictOptions(**values, training_diameter=training)


def probability_function(model, tta: int = 1):
    """(N, t, t, 3) normalised tiles -> (N, t, t, C) softmax probabilities, inference mode.
    `model`: a Keras model or an Engine (nucleiseg.inference.engines)."""
    from nucleiseg.algorithms.tiling import with_test_time_augmentation
    from nucleiseg.inference.engines import as_engine

    engine = as_engine(model)

    def predict_batch(tiles):
        return softmax(np.asarray(engine.predict_logits(tiles), dtype=np.float32))

    return predict_batch if tta == 1 else with_test_time_augmentation(predict_batch, tta)


def predict_probabilities(model, image: np.ndarray, config: dict,
                          options: PredictOptions | None = None,
                          intensity: tuple[float, float] | None = None) -> np.ndarray:
    """Class probabilities (H, W, C) at the image's own size.

    A model trained on resized whole images ('resize' sampling) sees the image resized to its
    training size; a model trained on native-resolution crops predicts in overlapping tiles.
    `options.scale` resizes the input first (e.g. 0.5 for nuclei twice the training size).
    `intensity`: the intensity_range to normalise with (a block of a huge image: the whole
    image's), else the image's own.
    """
    from nucleiseg.algorithms.tiling import predict_tiled
    from nucleiseg.inference.engines import as_engine

    options = options or PredictOptions()
    predict_batch = probability_function(model, options.tta)
    normalised = (normalize_image(image) if intensity is None
                  else apply_intensity_range(image, *intensity))
    native_shape = normalised.shape[:2]
    if options.scale != 1.0:
        shape = tuple(max(1, round(n * options.scale)) for n in native_shape)
        normalised = resize_image(normalised, shape)
    if config.get("sampling", "resize") == "resize":
        size = int(config["image_size"])
        small = resize_image(normalised, (size, size))[None]
        probabilities = resize_image(predict_batch(small)[0], normalised.shape[:2])
    else:
        num_classes = as_engine(model).num_classes
        probabilities = predict_tiled(predict_batch, normalised, num_classes, options.tile,
                                      options.overlap, options.batch_size)
    if options.scale != 1.0:
        probabilities = resize_image(probabilities, native_shape)
    return probabilities


def predict_quantised(model, image: np.ndarray, config: dict,
                      options: PredictOptions | None = None,
                      intensity: tuple[float, float] | None = None) -> np.ndarray:
    """predict_probabilities as uint8 (0..255), in bounded memory for native-resolution models:
    tiles are normalised one by one with the image's intensity range, and the blended
    probabilities are stored quantised. What `predict` and `segment_image` use. `intensity`:
    the image's intensity_range, when the caller has it already."""
    from nucleiseg.algorithms.tiling import predict_tiled
    from nucleiseg.inference.engines import as_engine

    model = as_engine(model)
    options = options or PredictOptions()
    if config.get("sampling", "resize") == "resize" or options.scale != 1.0:
        return quantise_probabilities(predict_probabilities(model, image, config, options,
                                                            intensity))
    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    low, high = intensity if intensity is not None else intensity_range(image)
    return predict_tiled(probability_function(model, options.tta), image,
                         model.num_classes, options.tile, options.overlap,
                         options.batch_size,
                         prepare=lambda crop: apply_intensity_range(crop, low, high),
                         dtype=np.uint8)


def show_predictions(model, images: np.ndarray, masks: np.ndarray, path: Path) -> None:
    """Predict model-ready images and draw input / true mask / predicted mask rows to `path`
    (the original's `show_predictions`, to a file instead of a window)."""
    from nucleiseg.render import prediction_grid

    prediction_grid(images, masks, create_mask(predict_logits(model, images)), path)


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    image: Path
    nuclei: int = 0
    mean_area: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False  # outputs were already there (--resume)
    planes: int = 1  # 2-D planes segmented (a z-stack or time series with --planes each)
    pixel_size_um: tuple[float, float] | None = None  # (y, x), when known
    check: dict | None = None  # ImageCheck.row(): diameter, scale, confidence, warning


RUN_OUTPUTS = ("measurements.csv", "summary.csv")
SUMMARY_COLUMNS = ("image", "nuclei", "mean_area", "seconds", "error", "planes", "pixel_size_um",
                   *CHECK_COLUMNS)


def output_stem(image_path: Path) -> str:
    """The file name without its type: 'a' for a.png, a.tif and a.ome.tif."""
    name = Path(image_path).name
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(image_path).stem


def output_paths(image_path: Path, out_dir: Path, exports=()) -> dict[str, Path]:
    """{kind: path} of one image's outputs; `exports` adds "geojson" and "imagej-rois"
    (nucleiseg.io.outlines: <stem>.geojson, <stem>_rois.zip)."""
    from nucleiseg.algorithms.blocks import is_zarr_image, zarr_labels_path

    stem = output_stem(image_path)
    if is_zarr_image(image_path):  # OME-Zarr: labels/nuclei inside it, beside the image
        stem = stem.removesuffix(".ome")
        return {"labels": zarr_labels_path(image_path), "mask": out_dir / f"{stem}_mask.png",
                "overlay": out_dir / f"{stem}_overlay.png",
                **export_paths(stem, out_dir, exports)}
    return {"labels": out_dir / f"{stem}_labels.tif", "mask": out_dir / f"{stem}_mask.png",
            "overlay": out_dir / f"{stem}_overlay.png", **export_paths(stem, out_dir, exports)}


def segment_image(model, image: np.ndarray, config: dict,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None,
                  intensity: tuple[float, float] | None = None) -> np.ndarray:
    """Raw image -> int32 label image of separated nuclei (0 = background)."""
    return segment_checked(model, image, config, options, instance_options, intensity)[0]


MAX_SCALED_PIXELS = 1 << 26  # an upscaled image is kept under 64 MP (memory)


def segment_checked(model, image: np.ndarray, config: dict,
                    options: PredictOptions | None = None,
                    instance_options: InstanceOptions | None = None,
                    intensity: tuple[float, float] | None = None, quantised: bool = True):
    """Segment at the scale `options` asks for -> (labels, probabilities, ImageCheck).

    With `options.diameter` "auto", the image is first segmented as it is; if its typical
    nucleus diameter is not within SCALE_TOLERANCE of the training size, it is resized to that
    size, predicted again and checked again (at most twice). Probabilities come back at the
    image's own size and are separated there, with the size thresholds tuned at the training
    size rescaled to match. On images already at the right scale the estimate costs one median.
    `quantised`: uint8 probabilities (bounded memory, as predict uses) or float (evaluate).
    """
    from nucleiseg.algorithms.scale import (
        SCALE_LIMITS,
        SCALE_TOLERANCE,
        ImageCheck,
        confidence_figures,
        scale_for,
        scaled_sizes,
        typical_diameter,
        warning_for,
    )

    options = options or PredictOptions()
    instance_options = instance_options or InstanceOptions()
    pixels = image.shape[0] * image.shape[1]
    upscale_limit = max(1.0, math.sqrt(MAX_SCALED_PIXELS / pixels))

    def run(scale: float):
        at_scale = dataclasses.replace(options, scale=scale)
        probabilities = (predict_quantised(model, image, config, at_scale, intensity) if quantised
                         else predict_probabilities(model, image, config, at_scale))
        sizes = scaled_sizes({"min_size": instance_options.min_size,
                              "min_split_size": instance_options.min_split_size}, scale)
        return probabilities, labels_from_probabilities(
            probabilities, dataclasses.replace(instance_options, **sizes))

    training = options.training_diameter
    if options.diameter is None:
        scale = options.scale
    elif options.diameter == "auto":
        scale = 1.0
    else:
        scale = float(np.clip(training / float(options.diameter), *SCALE_LIMITS))
    scale = min(scale, upscale_limit)
    probabilities, labels = run(scale)
    diameter, count = typical_diameter(labels)
    if options.diameter == "auto":
        for _ in range(2):
            if diameter is None:  # maybe nuclei under min_size at this scale: look again
                probe = labels_from_probabilities(probabilities, dataclasses.replace(
                    instance_options, min_size=1, min_confidence=0.0, split_levels=()))
                diameter, _ = typical_diameter(probe)
            wanted = min(scale_for(diameter, training), upscale_limit)
            if abs(math.log(wanted / scale)) < math.log(SCALE_TOLERANCE):
                break
            scale = wanted
            probabilities, labels = run(scale)
            diameter, count = typical_diameter(labels)
    confidence, uncertain = confidence_figures(quantise_probabilities(probabilities))
    check = ImageCheck(diameter, scale, confidence, uncertain)
    warning = warning_for(check, training, int(labels.max()))
    if scale >= upscale_limit > 1.0 and training and diameter and training / diameter > scale:
        warning = "; ".join(filter(None, [warning, "upscaling limited to keep memory bounded"]))
    return labels, probabilities, dataclasses.replace(check, warning=warning)


def label_image_dtype(count: int):
    """uint16 (what most viewers expect) unless more nuclei than it can number."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def plan_outputs(images, out_dir: Path, overwrite: bool, resume: bool, exports=()) -> None:
    """Refuse inputs that would write the same outputs, and existing outputs unless
    --overwrite (replace them) or --resume (keep complete ones) says what to do."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    stems: dict[str, Path] = {}
    for path in images:
        stem = output_stem(path)
        if stem in stems:
            raise UsageError(f"two inputs would write the same outputs: {stems[stem]} and "
                             f"{path} (both named {stem!r})")
        stems[stem] = path
    if not overwrite and not resume:
        planned = [p for image in images
                   for p in output_paths(image, out_dir, exports).values()]
        existing = [p for p in planned + [out_dir / name for name in RUN_OUTPUTS] if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]}: output exists ({len(existing)} in all); pass "
                             "--resume to keep complete outputs and do the rest, or "
                             "--overwrite to replace them")


def previous_rows(out_dir: Path) -> dict[str, dict]:
    """Per-image rows (time, scale, checks) of an earlier run's summary.csv (for --resume),
    if there is one."""
    import csv

    try:
        with open(out_dir / "summary.csv", newline="", encoding="utf-8",
                  errors="backslashreplace") as handle:
            return {row["image"]: row for row in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error):
        return {}


def predict_files(model, record: dict, inputs, out_dir: Path, overwrite: bool = False,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None, progress=print,
                  resume: bool = False, read_options: ReadOptions | None = None,
                  exports=(), runner=None, overlap: bool | None = None):
    """Segment every image in `inputs`. Per image: <stem>_labels.tif (uint16, 1..N = nuclei;
    uint32 above 65,535 nuclei), <stem>_mask.png (0/255) and <stem>_overlay.png (outlines), at
    the image's own size; for the run: measurements.csv (one row per nucleus) and summary.csv
    (one row per image, failures included).

    `read_options` (nucleiseg.io.microscopy.ReadOptions) picks the nuclear channel of
    multi-channel files, segments each plane of a z-stack or time series (the labels TIFF is a
    stack with the same plane axes, nuclei numbered per plane; the PNGs show the middle plane)
    or a max/mean projection, and overrides the files' pixel size (measurements in µm).

    `exports` ("geojson", "imagej-rois"; nucleiseg.io.outlines) adds per image the nuclei's
    outlines for QuPath (<stem>.geojson) and Fiji (<stem>_rois.zip); huge images (block by
    block) do not take them yet and are reported as failed.

    A file that cannot be read is reported and skipped; the others are still processed.
    With `resume`, images whose outputs (the three, and the exports asked for) exist are not
    predicted again (their rows are measured from the saved labels). Every file is written
    atomically. Without `instance_options`, the model's tuned post-processing (from its
    record) is used. `runner`: where the images are segmented (None: here, one after the
    other; a nucleiseg.integrations.dask.DaskRunner: on a Dask cluster); the outputs are the same.
    While the run writes into `out_dir`, a second run into it is refused
    (nucleiseg.io.images.OutputLock). `overlap` (without a runner): segment the next image while the
    model runs on one and the previous one's files are written (overlapped_outcomes; the same
    outputs); None: when the process may use two cores or more and NUCLEISEG_OVERLAP is not 0.
    Returns a list of PredictionResult.
    """
    import contextlib

    from nucleiseg.algorithms.instances import COLUMNS, MICRON_COLUMNS
    from nucleiseg.inference.engines import as_engine
    from nucleiseg.io.images import OutputLock
    from nucleiseg.io.microscopy import PLANE_COLUMNS

    unknown = [name for name in exports if name not in EXPORTS]
    if unknown:
        raise UsageError(f"unknown exports {unknown}; choose from {', '.join(EXPORTS)}")
    model = as_engine(model)
    images = find_images(inputs)
    instance_options = instance_options or instance_options_from(record)
    options = options or options_for(record)  # --diameter auto when the model records its size
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        if out_dir.is_dir():  # refuse a folder in use before looking at what it holds
            stack.enter_context(OutputLock(out_dir))
        plan_outputs(images, out_dir, overwrite, resume, exports)
        if not out_dir.is_dir():
            out_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(OutputLock(out_dir))
        earlier = previous_rows(out_dir) if resume else {}
        jobs = [Job(path, output_paths(path, out_dir, exports)) for path in images]
        if resume:
            jobs = [dataclasses.replace(job, done=all(p.exists() for p in job.paths.values()))
                    for job in jobs]
        measurements = CsvStream(out_dir / "measurements.csv",
                                 ("image", *PLANE_COLUMNS, *COLUMNS, *MICRON_COLUMNS))
        summary = CsvStream(out_dir / "summary.csv", SUMMARY_COLUMNS)
        if runner is not None:
            outcomes = runner.outcomes
        elif overlap_wanted() if overlap is None else overlap:
            outcomes = overlapped_outcomes
        else:
            outcomes = local_outcomes
        work = outcomes(model, record, jobs, options, instance_options, read_options, earlier)
        results = []
        try:
            for index, (job, (result, rows)) in enumerate(zip(jobs, work), start=1):
                report(progress, index, len(jobs), job, result)
                results.append(result)
                name = display_name(job.path)
                measurements.write({"image": name, **row} for row in rows)
                summary.write([summary_row(name, result)])
        except BaseException:
            work.close()
            measurements.discard()
            summary.discard()
            raise
        work.close()  # zip stops before asking `work` for more: let it end its threads now
        measurements.commit()
        summary.commit()
        remove_partials(out_dir, jobs)
    return results


def remove_partials(out_dir: Path, jobs) -> None:
    """Remove what a killed writer left: the hidden temporary files (io.images.atomic_write:
    `.<name>.XXXXXXXX<suffix>`) of this run's outputs. Called while the run holds the lock on
    `out_dir` and all its images are done, so no writer is left to own them."""
    import os
    import re

    names = {(p.stem, p.suffix) for job in jobs for p in map(Path, job.paths.values())
             if p.parent == out_dir}
    pattern = re.compile(r"\.(.+)\.[a-z0-9_]{8}(\.[^.]+)$")
    with os.scandir(out_dir) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name) if entry.name.startswith(".") else None
            if match and match.groups() in names and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Job:
    """One image of a run: its outputs, and whether they exist already (--resume)."""

    path: Path
    paths: dict
    done: bool = False


def local_outcomes(model, record, jobs, options, instance_options, read_options, earlier):
    """(PredictionResult, rows) of each job in turn, in this process."""
    for job in jobs:
        yield run_job(model, record, job, options, instance_options, read_options, earlier)


def overlap_wanted() -> bool:
    """Overlap by default where two cores or more may run: NUCLEISEG_OVERLAP=0 turns it off."""
    from nucleiseg.inference.engines import usable_cores

    return os.environ.get("NUCLEISEG_OVERLAP", "1") != "0" and usable_cores() > 1


class Cancelled(Exception):
    """An overlapped image abandoned (before any of its files is written): the run stopped."""


class Turns:
    """Order of writing for overlapped images: image k (from 0) writes its files once k images
    have been reported, as in a run one image after the other; `stop` ends every wait."""

    def __init__(self):
        self.condition = threading.Condition()
        self.reported = 0
        self.stopped = False

    def wait(self, index: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.reported >= index or self.stopped)
        if self.stopped:
            raise Cancelled

    def advance(self) -> None:
        with self.condition:
            self.reported += 1
            self.condition.notify_all()

    def stop(self) -> None:
        with self.condition:
            self.stopped = True
            self.condition.notify_all()


def shared_engine(engine, turns: Turns):
    """`engine` for images in several threads: one model call at a time (TFLite and Keras
    models are not safe to call concurrently; ONNX Runtime already uses every core), and none
    once the run has stopped."""
    from nucleiseg.inference.engines import Engine

    lock = threading.Lock()

    def predict_logits(tiles):
        with lock:
            if turns.stopped:
                raise Cancelled
            return engine.predict_logits(tiles)

    return Engine(engine.name, predict_logits, engine.num_classes)


IN_FLIGHT = 2  # images segmented at once: one in the model while the other is not


def overlapped_outcomes(model, record, jobs, options, instance_options, read_options, earlier,
                        in_flight: int = IN_FLIGHT):
    """local_outcomes' results, with up to `in_flight` images at once in threads: one is read,
    separated, measured or written while another is in the model (numpy, scipy, Pillow and
    ONNX Runtime release the GIL in most of their work). Each image writes its files only once
    the previous one is reported, so an interrupted or failed run leaves the files a run one
    image after the other would have left. Huge images (block by block) run alone, here."""
    from nucleiseg.algorithms.blocks import is_large_input
    from nucleiseg.inference.engines import as_engine

    turns = Turns()
    engine = shared_engine(as_engine(model), turns)
    pending = collections.deque()  # futures of the jobs after the last one given out
    executor = ThreadPoolExecutor(in_flight, thread_name_prefix="nucleiseg-image")
    try:
        for index, job in enumerate(jobs):
            if is_large_input(job.path):
                while pending:
                    yield pending.popleft().result()
                    turns.advance()
                yield run_job(model, record, job, options, instance_options, read_options,
                              earlier)
                turns.advance()
                continue
            pending.append(executor.submit(
                run_job, engine, record, job, options, instance_options, read_options,
                earlier, turn=functools.partial(turns.wait, index)))
            if len(pending) == in_flight:
                yield pending.popleft().result()
                turns.advance()
        while pending:
            yield pending.popleft().result()
            turns.advance()
    finally:  # stopped early (an error, Ctrl-C) or done: no image is left running
        turns.stop()
        executor.shutdown(wait=True, cancel_futures=True)


def run_job(model, record, job: Job, options, instance_options, read_options, earlier,
            segmented=None, turn=None):
    """(PredictionResult, rows) of one image: segmented and written, or (resumed) measured
    from its saved labels; an unusable file gives a result with its error and no rows.
    `segmented`: how a huge image's blocks are segmented (nucleiseg.algorithms.blocks.label_blocks);
    `turn()`: returns when the image's files may be written (see segment_file)."""
    try:
        if job.done:
            return measure_saved(job.path, job.paths["labels"], earlier, read_options)
        return segment_file(model, record, job.path, job.paths, options, instance_options,
                            read_options, segmented=segmented, turn=turn)
    except DataError as error:
        return PredictionResult(job.path, error=str(error)), []


def report(progress, index: int, total: int, job: Job, result: PredictionResult) -> None:
    """The progress line of one image (and its warning)."""
    if result.error:
        progress(f"[{index}/{total}] skipped: {display_name(result.error)}")
        return
    name = display_name(job.path)
    how = "done before, " if job.done else ""
    check = result.check or {}
    scale = float(check.get("scale") or 1.0)
    at = f" (scale {scale:.2f})" if scale != 1.0 else ""
    planes = f" in {result.planes} planes" if result.planes > 1 else ""
    progress(f"[{index}/{total}] {name}: {how}{result.nuclei} nuclei{planes}{at}")
    if check.get("warning"):
        progress(f"  warning: {name}: {check['warning']}")


def summary_row(name: str, result: PredictionResult) -> dict:
    return {"image": name, "nuclei": result.nuclei, "mean_area": round(result.mean_area, 2),
            "seconds": round(result.seconds, 3), "error": result.error or "",
            "planes": "" if result.error else result.planes,
            "pixel_size_um": format_pixel_size(result.pixel_size_um), **(result.check or {})}


def display_name(item) -> str:
    """A file name or message printable on any terminal (non-UTF-8 bytes escaped)."""
    text = item.name if isinstance(item, Path) else str(item)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def segment_file(model, record: dict, path: Path, paths: dict, options, instance_options,
                 read_options: ReadOptions | None = None, segmented=None, turn=None):
    """Read, predict, separate, measure, write the three images; (PredictionResult,
    measurement rows). A stack is segmented plane by plane: its labels are written as a stack,
    its mask and overlay show the middle plane. Huge images (whole-slide TIFF, OME-Zarr) go
    block by block (algorithms.blocks; `segmented`: how their blocks are segmented, default
    here). The nuclei are measured in a thread while the files are written; `turn()`, when
    given, is called before writing (the overlapped path writes one image's files after the
    previous image is reported)."""
    from nucleiseg.algorithms.blocks import is_large_input, segment_large_file
    from nucleiseg.render import outline_overlay

    if is_large_input(path):
        refuse_file_options_for_blocks(path, read_options)
        refuse_exports_for_blocks(path, paths)
        extra = {} if segmented is None else {"segmented": segmented}
        return segment_large_file(model, record, path, paths, options, instance_options,
                                  **extra)

    start = time.perf_counter()
    images, axes, info = read_planes(path, read_options)
    shape = images.shape[:len(axes)]
    planes = images.reshape(-1, *images.shape[len(axes):])
    labels = None  # (planes, H, W); one 2-D image's labels are used as they come
    middle = len(planes) // 2
    checks = []
    for flat, image in enumerate(planes):
        intensity = intensity_range(image)  # once, for the model and for the overlay
        try:
            found, _, check = segment_checked(model, image, record["config"], options,
                                              instance_options, intensity)
            checks.append(check)
            if len(planes) == 1:
                labels = found[None]
            else:
                labels = np.zeros(planes.shape[:-1], np.int32) if labels is None else labels
                labels[flat] = found
        except MemoryError:
            raise DataError(f"{path}: not enough memory to segment this "
                            f"{image.shape[1]}x{image.shape[0]} image; try a smaller "
                            "--tile") from None
        if flat == middle:
            shown = intensity
    with ThreadPoolExecutor(1, thread_name_prefix="nucleiseg-measure") as helper:
        measured = helper.submit(measure_planes, labels, planes, axes, shape,
                                 info.pixel_size_um)  # while the files are written
        if turn is not None:
            turn()
        count = int(labels.max())
        write_labels(paths["labels"], labels.reshape(*shape, *labels.shape[1:])
                     .astype(label_image_dtype(count)), axes, info.pixel_size_um)
        mask = (labels[middle] > 0).view(np.uint8)
        mask *= 255
        write_png(paths["mask"], mask)
        del mask
        write_png(paths["overlay"], outline_overlay(planes[middle], labels[middle], *shown))
        rows = measured.result()
    if set(EXPORTS) & paths.keys():
        write_exports(paths, labels, rows, axes, shape)
    return PredictionResult(path, len(rows), mean_area(rows), time.perf_counter() - start,
                            planes=len(planes), pixel_size_um=info.pixel_size_um,
                            check=combine_checks(checks)), rows


def refuse_file_options_for_blocks(path: Path, read_options: ReadOptions | None) -> None:
    """Huge images are read block by block, as grey or RGB(A) 2-D images only (for now)."""
    if read_options is not None and (read_options.channel is not None
                                     or read_options.planes != "each"):
        raise DataError(f"{path}: huge images (whole-slide TIFF, OME-Zarr) are read block by "
                        "block, which takes grey or RGB images only: --channel and --planes "
                        "do not apply to them yet")


def refuse_exports_for_blocks(path: Path, paths: dict) -> None:
    """Huge images have no outlines for QuPath or Fiji yet (their labels are written block by
    block, never held whole)."""
    asked = sorted(set(EXPORTS) & paths.keys())
    if asked:
        raise DataError(f"{path}: huge images (whole-slide TIFF, OME-Zarr) are segmented block "
                        f"by block, without --{' or --'.join(asked)} for now")


def measure_planes(labels: np.ndarray, planes: np.ndarray, axes: str, shape,
                   pixel_size: tuple[float, float] | None) -> list[dict]:
    """Measurement rows of labels (N, H, W) over images (N, H, W, C): each plane's nuclei with
    its plane indices (empty for one 2-D image, `axes` "") and µm columns."""
    from nucleiseg.algorithms.instances import in_micrometres, measure_nuclei
    from nucleiseg.io.microscopy import plane_columns

    rows = []
    for flat, (plane_labels, image) in enumerate(zip(labels, planes)):
        where = plane_columns(axes, shape, flat if axes else None)
        rows += [{**where, **row, **in_micrometres(row, pixel_size)}
                 for row in measure_nuclei(plane_labels, image)]
    return rows


def measure_saved(path: Path, labels_path: Path, earlier: dict,
                  read_options: ReadOptions | None = None):
    """Rows of an image whose outputs an earlier run wrote (--resume)."""
    from nucleiseg.algorithms.blocks import is_large_input, measure_saved_large
    from nucleiseg.io.images import read_pixels

    if is_large_input(path):
        return measure_saved_large(path, labels_path, earlier)
    images, axes, info = read_planes(path, read_options)
    labels = read_pixels(labels_path)[0]
    if labels.shape != images.shape[:-1]:
        raise DataError(f"{labels_path}: does not match {path.name} (another image's output, or "
                        "other --channel/--planes?); delete it or use --overwrite")
    shape = images.shape[:len(axes)]
    planes = images.reshape(-1, *images.shape[len(axes):])
    rows = measure_planes(labels.reshape(-1, *labels.shape[len(axes):]), planes, axes, shape,
                          info.pixel_size_um)
    row = earlier.get(display_name(path), {})
    seconds = float(row.get("seconds") or 0.0)
    check = {key: row.get(key, "") for key in CHECK_COLUMNS}
    return PredictionResult(path, len(rows), mean_area(rows), seconds, resumed=True,
                            planes=len(planes), pixel_size_um=info.pixel_size_um,
                            check=check), rows


def mean_area(rows) -> float:
    return float(np.mean([row["area"] for row in rows])) if rows else 0.0

"""A run over many files: the outputs planned and locked, each image segmented in turn, or
overlapped with the next (threads), or on a Dask cluster (a runner), and measurements.csv and
summary.csv streamed as images are done."""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nucleiseg.algorithms.instances import (
    COLUMNS,
    MICRON_COLUMNS,
    InstanceOptions,
    instance_options_from,
)
from nucleiseg.errors import Cancelled, DataError, UsageError
from nucleiseg.inference.engines import as_engine, usable_cores
from nucleiseg.inference.predict import PredictOptions, options_for
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import find_images
from nucleiseg.io.microscopy import PLANE_COLUMNS, ReadOptions
from nucleiseg.io.outlines import EXPORTS
from nucleiseg.io.runfiles import CsvStream, OutputLock
from nucleiseg.io.wholeslide import BLOCKWISE_PIXELS, is_large_input
from nucleiseg.pipeline.one_file import measure_saved, segment_file
from nucleiseg.pipeline.outputs import (
    SUMMARY_COLUMNS,
    PredictionResult,
    display_name,
    output_paths,
    plan_outputs,
    previous_rows,
    remove_partials,
    summary_row,
)


def predict_files(model, record: dict, inputs, out_dir: Path, overwrite: bool = False,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None, progress=print,
                  resume: bool = False, read_options: ReadOptions | None = None,
                  exports=(), runner=None, overlap: bool | None = None,
                  blockwise_pixels: int = BLOCKWISE_PIXELS, block_progress=None):
    """Segment every image in `inputs`. Per image: <stem>_labels.tif (uint16, 1..N = nuclei;
    uint32 above 65,535 nuclei), <stem>_mask.png (0/255) and <stem>_overlay.png (outlines), at
    the image's own size; for the run: measurements.csv (one row per nucleus) and summary.csv
    (one row per image, failures included).

    `read_options` (nucleiseg.io.microscopy.ReadOptions) picks the nuclear channel of
    multi-channel files, segments each plane of a z-stack or time series (the labels TIFF is a
    stack with the same plane axes, nuclei numbered per plane; the PNGs show the middle plane)
    or a max/mean projection, and overrides the files' pixel size (measurements in µm).

    `exports` ("geojson", "imagej-rois"; nucleiseg.io.outlines) adds per image the nuclei's
    outlines for QuPath (<stem>.geojson) and Fiji (<stem>_rois.zip); those of huge images are
    written nucleus by nucleus as their blocks are done.

    A file that cannot be read is reported and skipped; the others are still processed.
    With `resume`, images whose outputs (the three, and the exports asked for) exist are not
    predicted again (their rows are measured from the saved labels). Every file is written
    atomically. Without `instance_options`, the model's tuned post-processing (from its
    record) is used. `runner`: where the images are segmented (None: here, one after the
    other; a nucleiseg.integrations.dask.DaskRunner: on a Dask cluster); the outputs are the same.
    While the run writes into `out_dir`, a second run into it is refused
    (nucleiseg.io.runfiles.OutputLock). `overlap` (without a runner): segment the next image
    while the model runs on one and the previous one's files are written (overlapped_outcomes;
    the same outputs); None: when the process may use two cores or more (predict
    --no-overlap: False). `blockwise_pixels`: tiled TIFFs with more pixels are segmented block
    by block (predict --blockwise-pixels). `block_progress`: a text stream where huge images
    show their blocks as they are done (predict: stderr; nucleiseg.pipeline.progress), or None.
    Returns a list of PredictionResult.
    """
    import contextlib

    unknown = [name for name in exports if name not in EXPORTS]
    if unknown:
        raise UsageError(f"unknown exports {unknown}; choose from {', '.join(EXPORTS)}")
    reading = read_options or ReadOptions()
    cells = reading.cells is not None
    stitch = reading.planes == "stitch"
    if resume and (cells or reading.measure_channels is not None or stitch):
        raise UsageError("--resume does not take --cells, --measure-channels or --planes stitch "
                         "yet")
    if stitch and (cells or reading.measure_channels is not None or exports):
        raise UsageError("--planes stitch does not take --cells, --measure-channels, "
                         "--geojson or --imagej-rois yet")
    images = find_images(inputs)
    segmenter = Segmenter(  # --diameter auto when the model records its size
        as_engine(model), record, options or options_for(record),
        instance_options or instance_options_from(record), read_options, blockwise_pixels)
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        if out_dir.is_dir():  # refuse a folder in use before looking at what it holds
            stack.enter_context(OutputLock(out_dir))
        plan_outputs(images, out_dir, overwrite, resume, exports, cells)
        if not out_dir.is_dir():
            out_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(OutputLock(out_dir))
        earlier = previous_rows(out_dir) if resume else {}
        jobs = [Job(path, output_paths(path, out_dir, exports, cells)) for path in images]
        if resume:
            jobs = [dataclasses.replace(job, done=all(p.exists() for p in job.paths.values()))
                    for job in jobs]
        measurements = CsvStream(out_dir / "measurements.csv",
                                 ("image", *PLANE_COLUMNS, *COLUMNS, *MICRON_COLUMNS),
                                 grow=cells or reading.measure_channels is not None or stitch)
        summary = CsvStream(out_dir / "summary.csv", SUMMARY_COLUMNS)
        if runner is not None:
            outcomes = runner.outcomes
        elif usable_cores() > 1 if overlap is None else overlap:
            outcomes = overlapped_outcomes
        else:
            outcomes = local_outcomes
        work = outcomes(segmenter, jobs, earlier, block_progress=block_progress)
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


@dataclasses.dataclass(frozen=True)
class Job:
    """One image of a run: its outputs, and whether they exist already (--resume)."""

    path: Path
    paths: dict
    done: bool = False


def local_outcomes(segmenter: Segmenter, jobs, earlier: dict, block_progress=None):
    """(PredictionResult, rows) of each job in turn, in this process."""
    for job in jobs:
        yield run_job(segmenter, job, earlier, block_progress=block_progress)


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
    lock = threading.Lock()

    def one_at_a_time(predict_logits):
        def predict(tiles):
            with lock:
                if turns.stopped:
                    raise Cancelled
                return predict_logits(tiles)

        return predict

    return engine.wrapped(one_at_a_time)


IN_FLIGHT = 2  # images segmented at once: one in the model while the other is not


def overlapped_outcomes(segmenter: Segmenter, jobs, earlier: dict, in_flight: int = IN_FLIGHT,
                        block_progress=None):
    """local_outcomes' results, with up to `in_flight` images at once in threads: one is read,
    separated, measured or written while another is in the model (numpy, scipy, Pillow and
    ONNX Runtime release the GIL in most of their work). Each image writes its files only once
    the previous one is reported, so an interrupted or failed run leaves the files a run one
    image after the other would have left. Huge images (block by block) run alone, here."""
    turns = Turns()
    shared = segmenter.with_engine(shared_engine(segmenter.engine, turns))
    pending = collections.deque()  # futures of the jobs after the last one given out
    executor = ThreadPoolExecutor(in_flight, thread_name_prefix="nucleiseg-image")
    try:
        for index, job in enumerate(jobs):
            if is_large_input(job.path, segmenter.blockwise_pixels):
                while pending:
                    yield pending.popleft().result()
                    turns.advance()
                yield run_job(segmenter, job, earlier, block_progress=block_progress)
                turns.advance()
                continue
            pending.append(executor.submit(
                run_job, shared, job, earlier, turn=functools.partial(turns.wait, index)))
            if len(pending) == in_flight:
                yield pending.popleft().result()
                turns.advance()
        while pending:
            yield pending.popleft().result()
            turns.advance()
    finally:  # stopped early (an error, Ctrl-C) or done: no image is left running
        turns.stop()
        executor.shutdown(wait=True, cancel_futures=True)


def run_job(segmenter: Segmenter, job: Job, earlier: dict, segmented=None, turn=None,
            block_progress=None):
    """(PredictionResult, rows) of one image: segmented and written, or (resumed) measured
    from its saved labels; an unusable file gives a result with its error and no rows.
    `segmented`: how a huge image's blocks are segmented (inference.blockwise.segment_blocks);
    `turn()`: returns when the image's files may be written; `block_progress`: see
    segment_file."""
    try:
        if job.done:
            return measure_saved(job.path, job.paths["labels"], earlier,
                                 segmenter.read_options, segmenter.blockwise_pixels)
        return segment_file(segmenter, job.path, job.paths, segmented=segmented, turn=turn,
                            block_progress=block_progress)
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

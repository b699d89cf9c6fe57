"""One file, end to end: read, segment, measure and write its outputs (a huge image block by
block, through nucleiseg.inference.blockwise), or, for --resume, measure it from its saved
labels."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.blocks import HALO, NucleusMasks, NucleusTable, plan_blocks
from nucleiseg.algorithms.cells import cells_from_channel, expand_nuclei
from nucleiseg.algorithms.instances import in_micrometres, measure_nuclei
from nucleiseg.algorithms.intensity import (
    channel_column_names,
    channel_measurements,
    compartment_measurements,
)
from nucleiseg.algorithms.preprocess import intensity_range
from nucleiseg.algorithms.scale import combine_checks
from nucleiseg.algorithms.stack3d import measure_3d, stitch_planes
from nucleiseg.errors import DataError, file_error
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import MAX_PIXELS, read_pixels, read_planes, write_labels, write_png
from nucleiseg.io.microscopy import (
    DEFAULT_CELL_MAX_DISTANCE,
    CellsSpec,
    ReadOptions,
    all_channels,
    channel_index,
    plane_columns,
)
from nucleiseg.io.outlines import EXPORTS, OutlineFiles, write_exports
from nucleiseg.io.wholeslide import (
    BLOCKWISE_PIXELS,
    RowSpool,
    ZarrLabels,
    is_large_input,
    open_large,
    write_tiff_labels,
)
from nucleiseg.pipeline.outputs import (
    PredictionResult,
    display_name,
    earlier_figures,
    label_image_dtype,
    mean_area,
)
from nucleiseg.pipeline.progress import SlideProgress
from nucleiseg.render import outline_overlay


def segment_file(segmenter: Segmenter, path: Path, paths: dict, segmented=None, turn=None,
                 block_progress=None):
    """Read, predict, separate, measure, write the three images; (PredictionResult,
    measurement rows). A stack is segmented plane by plane: its labels are written as a stack,
    its mask and overlay show the middle plane. Huge images (whole-slide TIFF, OME-Zarr) go
    block by block (algorithms.blocks; `segmented`: how their blocks are segmented, default
    here). The nuclei are measured in a thread while the files are written; `turn()`, when
    given, is called before writing (the overlapped path writes one image's files after the
    previous image is reported); `block_progress`: a text stream where a huge image shows
    its blocks as they are done (SlideProgress), or None."""
    if is_large_input(path, segmenter.blockwise_pixels):
        refuse_file_options_for_blocks(path, segmenter.read_options)
        extra = {} if segmented is None else {"segmented": segmented}
        return segment_large_file(segmenter, path, paths, block_progress=block_progress,
                                  **extra)

    start = time.perf_counter()
    images, axes, info = read_planes(path, segmenter.read_options)
    shape = images.shape[:len(axes)]
    planes = images.reshape(-1, *images.shape[len(axes):])
    labels = None  # (planes, H, W); one 2-D image's labels are used as they come
    middle = len(planes) // 2
    checks = []
    for flat, image in enumerate(planes):
        intensity = intensity_range(image)  # once, for the model and for the overlay
        try:
            found, _, check = segmenter.checked(image, intensity)
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
    reading = segmenter.read_options or ReadOptions()
    if reading.planes == "stitch" and axes:
        return write_stitched(path, paths, labels, planes[middle], shown, axes, info,
                              PredictionResult(path, planes=len(planes),
                                               pixel_size_um=info.pixel_size_um,
                                               check=combine_checks(checks)), start, turn)
    channels, names = (file_channels(path, reading, len(planes)) if reading.needs_channels
                       else (None, ()))
    cells = (None if reading.cells is None else
             grow_cells(path, reading.cells, labels, channels, names, info.pixel_size_um))
    measured_channels = (None if reading.measure_channels is None else
                         pick_channels(path, reading.measure_channels, channels, names))
    with ThreadPoolExecutor(1, thread_name_prefix="nucleiseg-measure") as helper:
        measured = helper.submit(measure_planes, labels, planes, axes, shape,
                                 info.pixel_size_um, cells,
                                 measured_channels)  # while the files are written
        if turn is not None:
            turn()
        count = int(labels.max())
        if cells is not None:
            write_labels(paths["cells"], cells.reshape(*shape, *cells.shape[1:])
                         .astype(label_image_dtype(count)), axes, info.pixel_size_um)
        write_labels(paths["labels"], labels.reshape(*shape, *labels.shape[1:])
                     .astype(label_image_dtype(count)), axes, info.pixel_size_um)
        mask = (labels[middle] > 0).view(np.uint8)
        mask *= 255
        write_png(paths["mask"], mask)
        del mask
        write_png(paths["overlay"], outline_overlay(
            planes[middle], labels[middle], *shown,
            cells=None if cells is None else cells[middle]))
        rows = measured.result()
    if set(EXPORTS) & paths.keys():
        write_exports(paths, labels, rows, axes, shape)
    return PredictionResult(path, len(rows), mean_area(rows), time.perf_counter() - start,
                            planes=len(planes), pixel_size_um=info.pixel_size_um,
                            check=combine_checks(checks)), rows


def write_stitched(path: Path, paths: dict, labels: np.ndarray, image: np.ndarray, shown,
                   axes: str, info, result: PredictionResult, start: float, turn=None):
    """--planes stitch: the planes' nuclei (Z, H, W) linked into 3-D nuclei
    (algorithms.stack3d.stitch_planes), written as one ZYX label image, and one row per 3-D
    nucleus (measure_3d: voxels, z extent, centroid; µm and µm³ when the pixel size and the
    z step are known). The mask and overlay show the middle plane."""
    if axes != "Z":
        raise DataError(f"{path}: --planes stitch links the planes of a z-stack; this file's "
                        f"planes are along {axes!r}")
    stitched = stitch_planes(labels)
    spacing = (None if info.pixel_size_um is None or info.z_step_um is None
               else (info.z_step_um, *info.pixel_size_um))
    rows = measure_3d(stitched, spacing)
    if turn is not None:
        turn()
    count = int(stitched.max())
    write_labels(paths["labels"], stitched.astype(label_image_dtype(count)), "Z",
                 info.pixel_size_um)
    middle = stitched[len(stitched) // 2]
    write_png(paths["mask"], (middle > 0).astype(np.uint8) * 255)
    write_png(paths["overlay"], outline_overlay(image, middle, *shown))
    mean = float(np.mean([row["voxels"] for row in rows])) if rows else 0.0
    return dataclasses.replace(result, nuclei=len(rows), mean_area=mean,
                               seconds=time.perf_counter() - start), rows


def refuse_file_options_for_blocks(path: Path, read_options: ReadOptions | None) -> None:
    """Huge images are read block by block, as grey or RGB(A) 2-D images only (for now)."""
    if read_options is not None and (read_options.cells is not None
                                     or read_options.measure_channels is not None):
        raise DataError(f"{path}: huge images (whole-slide TIFF, OME-Zarr) are processed block "
                        "by block, without --cells or --measure-channels for now")
    if read_options is not None and (read_options.channel is not None
                                     or read_options.planes != "each"):
        raise DataError(f"{path}: huge images (whole-slide TIFF, OME-Zarr) are read block by "
                        "block, which takes grey or RGB images only: --channel and --planes "
                        "do not apply to them yet")


def measure_planes(labels: np.ndarray, planes: np.ndarray, axes: str, shape,
                   pixel_size: tuple[float, float] | None, cells: np.ndarray | None = None,
                   channels: tuple[np.ndarray, list[str]] | None = None) -> list[dict]:
    """Measurement rows of labels (N, H, W) over images (N, H, W, C): each plane's nuclei with
    its plane indices (empty for one 2-D image, `axes` "") and µm columns; with `cells` (N, H,
    W, the nuclei's ids) cell_area (and cell_area_um2); with `channels` ((N, H, W, K) pixels,
    K column names) each channel's mean, median and integrated intensity per nucleus (and per
    cell and cytoplasm, with `cells`)."""
    rows = []
    for flat, (plane_labels, image) in enumerate(zip(labels, planes)):
        where = plane_columns(axes, shape, flat if axes else None)
        found = measure_nuclei(plane_labels, image)
        extra = {row["label"]: {} for row in found}
        if cells is not None:
            areas = np.bincount(cells[flat].ravel(), minlength=int(plane_labels.max()) + 1)
            for row in found:
                area = int(areas[row["label"]])
                extra[row["label"]].update(cell_area=area, cell_area_um2=(
                    "" if pixel_size is None else area * pixel_size[0] * pixel_size[1]))
        if channels is not None:
            pixels, columns = channels
            if cells is None:
                measured = channel_measurements(plane_labels, pixels[flat], columns)
            else:
                measured = compartment_measurements(plane_labels, cells[flat], pixels[flat],
                                                    columns)
            for label, values in measured.items():
                extra[label].update((key, value) for key, value in values.items()
                                    if not key.endswith("_pixels"))
        rows += [{**where, **row, **in_micrometres(row, pixel_size), **extra[row["label"]]}
                 for row in found]
    return rows


def file_channels(path: Path, reading: ReadOptions, count: int):
    """Every channel of the original file, as (count, H, W, C) planes that match the segmented
    ones (the same planes kept or projected), and the channels' names."""
    array, info = read_pixels(path, reading.max_pixels or MAX_PIXELS)
    stack, lead, names = all_channels(path, array, info, reading.planes)
    stack = stack.reshape(-1, *stack.shape[len(lead):])
    if len(stack) != count:
        raise DataError(f"{path}: its channels do not have the planes of the nuclear channel")
    return stack, names


def grow_cells(path: Path, spec: CellsSpec, nuclei: np.ndarray, channels, names,
               pixel_size: tuple[float, float] | None) -> np.ndarray:
    """--cells: the cells (N, H, W) of nuclei (N, H, W), with the nuclei's ids; distances are
    in µm when the pixel size is known, else pixels."""
    if spec.channel is None:
        return np.stack([expand_nuclei(plane, spec.distance, spacing=pixel_size)
                         for plane in nuclei])
    index = channel_index(path, spec.channel, channels.shape[-1], names, "--cells channel:")
    if spec.max_distance is None:
        distance = DEFAULT_CELL_MAX_DISTANCE
    elif pixel_size is None:
        distance = spec.max_distance
    else:
        distance = spec.max_distance / float(np.mean(pixel_size))
    return np.stack([cells_from_channel(plane, channels[flat, ..., index], distance)
                     for flat, plane in enumerate(nuclei)])


def pick_channels(path: Path, wanted, channels: np.ndarray, names):
    """--measure-channels: (the channels' pixels (N, H, W, K), their K column names)."""
    count = channels.shape[-1]
    columns = channel_column_names([name or None for name in names], count)
    indices = list(range(count)) if wanted == "all" else [
        channel_index(path, channel, count, names, "--measure-channels") for channel in wanted]
    indices = list(dict.fromkeys(indices))
    return channels[..., indices], [columns[i] for i in indices]


def measure_saved(path: Path, labels_path: Path, earlier: dict,
                  read_options: ReadOptions | None = None,
                  blockwise_pixels: int = BLOCKWISE_PIXELS):
    """Rows of an image whose outputs an earlier run wrote (--resume)."""
    if is_large_input(path, blockwise_pixels):
        return measure_saved_large(path, labels_path, earlier)
    images, axes, info = read_planes(path, read_options)
    labels = read_pixels(labels_path, (read_options or ReadOptions()).max_pixels or MAX_PIXELS)[0]
    if labels.shape != images.shape[:-1]:
        raise DataError(f"{labels_path}: does not match {path.name} (another image's output, or "
                        "other --channel/--planes?); delete it or use --overwrite")
    shape = images.shape[:len(axes)]
    planes = images.reshape(-1, *images.shape[len(axes):])
    rows = measure_planes(labels.reshape(-1, *labels.shape[len(axes):]), planes, axes, shape,
                          info.pixel_size_um)
    seconds, check = earlier_figures(earlier, path)
    return PredictionResult(path, len(rows), mean_area(rows), seconds, resumed=True,
                            planes=len(planes), pixel_size_um=info.pixel_size_um,
                            check=check), rows


def segment_large_file(segmenter: Segmenter, path: Path, paths: dict, halo: int = HALO,
                       core: int | None = None, segmented=None, block_progress=None):
    """segment_file for a huge image: (PredictionResult, measurement rows). Labels: a tiled
    BigTIFF at paths['labels'] (TIFF input) or labels/nuclei inside the OME-Zarr input; mask
    and overlay: previews (longest side <= 4096); rows: streamed from a temporary file as they
    were measured, so memory stays flat however many nuclei; with --geojson / --imagej-rois,
    the outlines are written nucleus by nucleus beside them. `segmented(blocks, options,
    instance_options, intensity)`: segments the blocks elsewhere (segment_blocks), with the
    image's one scale, post-processing and intensity range; the segmenter's engine then only
    fixes those. `block_progress`: a text stream for its progress (SlideProgress), or None."""
    start = time.perf_counter()
    image = open_large(path)
    try:
        spool = RowSpool(Path(paths["mask"]).parent)
        outlines = OutlineFiles(paths) if set(EXPORTS) & paths.keys() else None
    except BaseException:
        image.close()
        raise
    masks = None if outlines is None else NucleusMasks()
    rows_done = rows_and_outlines(spool, outlines, masks)
    try:
        run = segmenter.blocks(image, core=core, halo=halo, previews=True,
                               rows_done=rows_done, segmented=segmented, masks=masks)
        blocks = run.blocks
        if block_progress is not None:
            blocks = shown_blocks(run, SlideProgress(
                block_progress, display_name(path), image.shape, run.count, run.core,
                run.options.scale, run.unsure))
        if image.kind == "ome-zarr":
            writer = ZarrLabels(image)
            try:
                for block, labels in blocks:
                    writer.add(block, labels)
                rows_done(run.table.rows())
                writer.commit()
            except BaseException:
                writer.discard()
                raise
        else:
            write_tiff_labels(paths["labels"], image.shape[:2], blocks)
            rows_done(run.table.rows())
        previews = run.previews
        mask = (previews.labels > 0).astype(np.uint8) * 255
        write_png(paths["mask"], mask)
        write_png(paths["overlay"], outline_overlay(previews.image, previews.labels,
                                                    *run.intensity))
        if outlines is not None:
            outlines.commit()
    except BaseException:
        spool.close()
        if outlines is not None:
            outlines.discard()
        raise
    finally:
        image.close()
    table = run.table
    mean = table.total_area / table.count if table.count else 0.0
    result = PredictionResult(path, table.count, mean, time.perf_counter() - start,
                              check=run.check)
    return result, spool.rows()


def shown_blocks(run, progress: SlideProgress):
    """run.blocks, each reported to `progress` as it is handed on to be written (segmented,
    stitched and numbered; the TIFF writer asks for nothing after the last one)."""
    try:
        for item in run.blocks:
            progress.block_done(run.table.top)
            yield item
    finally:
        progress.finish()


def rows_and_outlines(spool: RowSpool, outlines: OutlineFiles | None, masks):
    """segment_blocks' `rows_done` for a huge image: the rows go to the spool and, with
    --geojson or --imagej-rois, each nucleus's outline (its pixels taken from `masks`) to the
    outline files."""
    def rows_done(rows):
        spool.write(rows)
        if outlines is not None:
            for row in rows:
                outlines.add(row, *masks.take(row["label"]))

    return rows_done


def measure_saved_large(path: Path, labels_path: Path, earlier: dict, core: int = 4096):
    """--resume for a huge image: its rows measured block by block from the saved labels."""
    image = open_large(path)
    try:
        labels = open_large(labels_path)
    except BaseException:
        image.close()
        raise
    try:
        if labels.shape[:2] != image.shape[:2]:
            raise file_error(labels_path, f"does not match {path.name} (another image's "
                             "output?); delete it or use --overwrite")
        table = NucleusTable()
        spool = RowSpool(Path(tempfile.gettempdir()))
        try:
            for row in plan_blocks(*image.shape[:2], core, 0):
                for block in row:
                    local = labels.read(*block.core)[..., 0].astype(np.int64)
                    ids = np.union1d([0], local)  # block numbers 0..k for the saved labels
                    compact = np.searchsorted(ids, local)
                    table.add_block(compact, ids.astype(np.uint32), image.read(*block.core),
                                    block.core[::2])
                spool.write(table.rows(row[-1].core[1]))
            spool.write(table.rows())
        except BaseException:
            spool.close()
            raise
    finally:
        image.close()
        labels.close()
    mean = table.total_area / table.count if table.count else 0.0
    seconds, check = earlier_figures(earlier, path)
    return PredictionResult(path, table.count, mean, seconds, resumed=True,
                            check=check), spool.rows()

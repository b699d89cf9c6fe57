"""What the napari widget computes, without napari or Qt: segment a layer's data with a model,
measure the nuclei, report progress and stop when asked.

A 2-D plane of up to `blockwise_pixels` pixels (default 8192²) is segmented as
`nucleiseg predict` segments a file (`segment_checked`: tiles, the nucleus size checked and the
image rescaled for it); a larger plane, or a lazy multiscale layer (a whole-slide TIFF or an
OME-Zarr opened by the reader), goes block by block as `predict` does for huge files
(`nucleiseg.inference.blockwise`), reading only a block at a time from the layer's data. The
labels come back as one array in memory (4 bytes a pixel for huge images: a 32768² slide takes
4 GB); `nucleiseg predict` writes them block by block to disk instead.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from nucleiseg.errors import Cancelled
from nucleiseg.inference.engines import Engine
from nucleiseg.io.wholeslide import BLOCKWISE_PIXELS


@dataclasses.dataclass
class LayerResult:
    """Labels of the layer's planes (the plane shape, uint32, nuclei numbered 1..N
    across all planes), their measurements as columns (one row per nucleus; 'index' is the
    label value, as napari's Labels.features expects), and what prediction learned."""

    labels: np.ndarray
    features: dict[str, np.ndarray]
    checks: list[dict]  # ImageCheck.row() per plane: diameter, scale, confidence, warning
    blockwise: bool = False

    @property
    def count(self) -> int:
        return len(self.features.get("index", ()))

    def summary(self) -> str:
        """'42 nuclei, diameter 11 px, scale 1.00' and the warnings, one line each."""
        parts = [f"{self.count} nuclei" if self.count != 1 else "1 nucleus"]
        diameters = [c["diameter"] for c in self.checks if c.get("diameter") not in (None, "")]
        scales = [c["scale"] for c in self.checks if c.get("scale") not in (None, "")]
        if diameters:
            parts.append(f"diameter {np.median(diameters):.0f} px")
        if scales:
            parts.append(f"scale {np.median(scales):.2f}")
        if self.blockwise:
            parts.append("block by block")
        warnings = dict.fromkeys(c["warning"] for c in self.checks if c.get("warning"))
        return "\n".join([", ".join(parts), *(f"warning: {w}" for w in warnings)])


class Progress:
    """Counts model calls (tiles) and blocks; `report(done, total, message)` (total 0: not
    known) is called after each, and `cancelled()` is asked before each."""

    def __init__(self, report=None, cancelled=None):
        self.report = report or (lambda done, total, message: None)
        self.cancelled = cancelled or (lambda: False)
        self.done, self.total, self.what = 0, 0, ""

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled

    def start(self, total: int, what: str) -> None:
        self.check()
        self.done, self.total, self.what = 0, total, what
        self.report(0, total, what)

    def step(self, what: str | None = None) -> None:
        self.done += 1
        if self.total and self.done > self.total:
            self.total = 0  # a second pass at another scale: count on, without a total
        self.report(self.done, self.total, what or self.what)

    def engine(self, engine: Engine) -> Engine:
        """`engine` checking for Cancel before, and counting, every model call."""

        def counting(predict_logits):
            def predict(tiles):
                self.check()
                logits = predict_logits(tiles)
                self.step()
                return logits

            return predict

        return engine.wrapped(counting)


def model_calls(shape, config: dict, options) -> int:
    """How many model calls one pass over a (H, W) plane takes (as predict_tiled tiles it),
    at the scale `options` fixes (1 when the diameter is estimated: the first pass)."""
    from nucleiseg.algorithms.tiling import tile_layout

    if config.get("sampling", "resize") == "resize":
        return options.tta
    scale = options.scale if options.diameter is None else 1.0
    if options.diameter not in (None, "auto") and options.training_diameter:
        scale = options.training_diameter / float(options.diameter)
    height, width = (max(1, round(n * scale)) for n in shape[:2])
    tile_h, rows = tile_layout(height, options.tile, options.overlap)
    tile_w, cols = tile_layout(width, options.tile, options.overlap)
    views = options.tta if tile_h == tile_w else min(options.tta, 4)  # as TTA does
    return len(rows) * len(cols) * views


def planes_of(data, rgb: bool = False, channel: int | None = None):
    """A layer's data as 2-D images to segment: (array (*planes, H, W[, C]) as given, lazily,
    the plane shape (*planes)). RGB(A) layers keep their colour unless `channel` picks one of
    the last axis; other layers of 3 or more dimensions are stacks of planes, unless `channel`
    picks an index of their first axis (a multi-channel layer)."""
    ndim = len(data.shape)
    if rgb:
        if channel is not None:
            if not 0 <= channel < data.shape[-1]:
                raise ValueError(f"channel {channel} does not exist (the layer has "
                                 f"{data.shape[-1]} colour channels)")
            data = data[..., channel]
            rgb = False
    elif channel is not None:
        if ndim < 3:
            raise ValueError("the layer has one channel: leave the channel empty")
        if not 0 <= channel < data.shape[0]:
            raise ValueError(f"channel {channel} does not exist (the layer's first axis has "
                             f"{data.shape[0]} entries)")
        data = data[channel]
    lead = tuple(data.shape[:-3] if rgb else data.shape[:-2])
    return data, lead, rgb


def blockwise(height: int, width: int, blockwise_pixels: int = BLOCKWISE_PIXELS) -> bool:
    return height * width > blockwise_pixels


def segment_layer_data(data, engine: Engine, record: dict, options=None,
                       instance_options=None, rgb: bool = False, channel: int | None = None,
                       levels=None, pixel_size: tuple[float, float] | None = None,
                       progress: Progress | None = None, block_core: int | None = None,
                       blockwise_pixels: int = BLOCKWISE_PIXELS) -> LayerResult:
    """Segment an image layer's data -> LayerResult.

    `data`: a NumPy, Dask or Zarr array (H, W), (H, W, C) when `rgb`, or a stack of those (its
    leading axes are planes, each segmented; `channel` picks the first axis's index of a
    multi-channel layer, or a colour of an RGB one). `levels`: the lower-resolution levels of
    a multiscale layer (its data[1:]), for the intensity range of a huge image. `options`,
    `instance_options`: as for predict (None: the model's record). `pixel_size` (y, x) µm adds
    the µm measurement columns. `block_core`: the block size for huge planes (default: chosen
    as `predict` chooses it); planes of more than `blockwise_pixels` pixels go block by block.
    """
    from nucleiseg.algorithms.instances import instance_options_from
    from nucleiseg.inference.predict import options_for
    from nucleiseg.inference.segmenter import Segmenter

    progress = progress or Progress()
    segmenter = Segmenter(engine, record, options or options_for(record),
                          instance_options or instance_options_from(record),
                          blockwise_pixels=blockwise_pixels)
    data, lead, rgb = planes_of(data, rgb, channel)
    height, width = data.shape[len(lead):len(lead) + 2]
    huge = blockwise(height, width, blockwise_pixels)
    if huge and lead:
        raise ValueError("stacks of huge planes are not segmented in napari; use "
                         "nucleiseg predict --planes each")
    count = math.prod(lead)
    labels = np.zeros((*lead, height, width), np.uint32)
    rows, checks, offset = [], [], 0
    for flat in range(count):
        index = np.unravel_index(flat, lead) if lead else ()
        plane = data[index] if lead else data
        where = f"plane {flat + 1}/{count}: " if count > 1 else ""
        if huge:
            found, plane_rows, check = _segment_blocks(plane, segmenter, levels, progress,
                                                       block_core)
        else:
            found, plane_rows, check = _segment_plane(plane, segmenter, progress, where)
        if offset:
            found[found > 0] += offset
            for row in plane_rows:
                row["label"] += offset
        labels[index] = found
        offset = max(offset, int(found.max()) if found.size else 0)
        for row in plane_rows:
            if lead:
                row["plane"] = flat
            rows.append(row)
        checks.append(check)
    return LayerResult(labels, feature_columns(rows, pixel_size, bool(lead)), checks, huge)


def _as_image(plane) -> np.ndarray:
    image = np.asarray(plane)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"cannot segment pixels of type {image.dtype}")
    return image if image.ndim == 3 else image[..., None]


def _segment_plane(plane, segmenter, progress, where):
    from nucleiseg.algorithms.instances import measure_nuclei
    from nucleiseg.algorithms.preprocess import sampled_kind
    from nucleiseg.inference.engines import as_engine
    from nucleiseg.inference.predict import with_colour_tta

    image = _as_image(plane)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    options = segmenter.options
    if as_engine(segmenter.engine).colour is not None:  # the bundled models: H&E with TTA
        options = with_colour_tta(options, sampled_kind(image))
    progress.start(model_calls(image.shape, segmenter.config, options), f"{where}tiles")
    labels, _, check = segmenter.checked(image, engine=progress.engine(segmenter.engine))
    progress.check()
    return labels.astype(np.uint32), measure_nuclei(labels, image), check.row()


def _segment_blocks(plane, segmenter, levels, progress, core=None):
    """A huge plane block by block (Segmenter.blocks: nucleiseg.inference.blockwise, as
    predict does it), reading a block at a time."""
    from nucleiseg.io.wholeslide import LargeImage

    arrays = [plane, *(levels or [])]
    axes = "YXC" if len(plane.shape) == 3 else "YX"
    image = LargeImage(Path("layer"), "napari", arrays, axes)
    progress.start(0, "intensity range and nucleus size")
    engine = segmenter.engine
    counting = engine.wrapped(lambda predict_logits: _checked(predict_logits, progress))
    run = segmenter.blocks(image, model=counting, core=core,
                           scale_model=progress.engine(engine))
    labels = np.zeros(image.shape[:2], np.uint32)
    progress.start(run.count, "blocks")
    what = progress.what
    for block, core_labels in run.blocks:
        top, bottom, left, right = block.core
        labels[top:bottom, left:right] = core_labels
        progress.step(f"{what} (row {block.row + 1}, column {block.col + 1})")
    return labels, run.table.rows(), run.check or {"scale": run.options.scale}


def _checked(predict, progress: Progress):
    def run(tiles):
        progress.check()
        return predict(tiles)

    return run


def feature_columns(rows: list[dict], pixel_size=None, planes: bool = False) -> dict:
    """measure_nuclei rows -> columns for napari's features: 'index' (the label value) first,
    then the measurements, the plane of a stack, and the µm columns when the size is known."""
    from nucleiseg.algorithms.instances import COLUMNS, MICRON_COLUMNS, in_micrometres

    names = ["index", *COLUMNS[1:], *(["plane"] if planes else [])]
    if pixel_size is not None:
        rows = [{**row, **in_micrometres(row, pixel_size)} for row in rows]
        names += MICRON_COLUMNS
    columns = {name: [] for name in names}
    for row in rows:
        for name in names:
            columns[name].append(row["label" if name == "index" else name])
    kinds = {"index": np.int64, "plane": np.int64, "bbox_min_y": np.int64, "bbox_min_x": np.int64,
             "bbox_max_y": np.int64, "bbox_max_x": np.int64}
    return {name: np.asarray(values, kinds.get(name, np.float64))
            for name, values in columns.items()}

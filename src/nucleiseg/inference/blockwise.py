"""Huge images block by block: the one orchestration that `predict` (nucleiseg.pipeline), the
napari widget and Dask workers (nucleiseg.integrations.dask) share.

`segment_blocks` fixes the image's one intensity range and scale (blocks must agree at their
seams), then gives the blocks in raster order, each read with a halo, segmented on its own
(`segment_block`: the same prediction and nucleus separation as a whole image), stitched to
the blocks before it and numbered (nucleiseg.algorithms.blocks). The caller decides what to do
with the labels: write them block by block (predict), hold them in memory (napari); with
`segmented` the blocks are segmented elsewhere (a Dask cluster) and only stitched here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nucleiseg.algorithms.blocks import (
    HALO,
    NucleusTable,
    Previews,
    block_geometry,
    label_blocks,
    plan_blocks,
)
from nucleiseg.algorithms.preprocess import (
    fluorescence_grey,
    has_colour,
    intensity_range,
    sampled_kind,
)
from nucleiseg.errors import file_error
from nucleiseg.inference.engines import as_engine
from nucleiseg.inference.predict import (
    PredictOptions,
    segment_checked,
    segment_image,
    with_stain,
)


def segment_block(window: np.ndarray, model, config: dict, options=None,
                  instance_options=None, intensity: tuple[float, float] | None = None
                  ) -> np.ndarray:
    """int32 labels (1..n in this block only) of one block's window: its core and halo, raw
    pixels (H, W, C) as read. `intensity`: the whole image's intensity_range, the same for
    every block (without it, the window's own, which differs from block to block)."""
    return segment_image(model, window, config, options, instance_options, intensity)


SCALE_SAMPLE = 2048  # side of the central window a huge image's nucleus size is estimated on
# --diameter auto upscales a huge image at most this much (4x the model's work): beyond, a
# slide would take hours on one window's size estimate (pass --diameter to go further).
HUGE_UPSCALE_LIMIT = 2.0


def central_window(image) -> np.ndarray:
    """The central SCALE_SAMPLE² window of a huge image, as read."""
    height, width = image.shape[:2]
    top, left = max(0, (height - SCALE_SAMPLE) // 2), max(0, (width - SCALE_SAMPLE) // 2)
    return image.read(top, min(height, top + SCALE_SAMPLE), left,
                      min(width, left + SCALE_SAMPLE))


def fix_scale(image, model, config: dict, options, instance_options, intensity):
    """One scale, one stain match and one post-processing for every block of a huge image
    (blocks must agree at their seams), decided on its central window as for any image: the
    post-processing and engine of the window's kind, the window's stain match (colour images,
    when the model has a stain reference; then the intensity range is the matched window's),
    and, with `--diameter auto` or a diameter, the scale (auto: upscaled at most HUGE_UPSCALE_LIMIT)
    -> (options with that scale and match fixed, instance options, intensity range, the
    window's ImageCheck or None)."""
    routed = as_engine(model).colour is not None
    if (options.diameter is None and options.stain_reference is None and not routed
            and not (instance_options and instance_options.by_kind)):
        return options, instance_options, intensity, None
    window = central_window(image)
    kind = sampled_kind(window)
    if routed:  # every block runs on the engine of the window's kind (Engine.colour), and
        # without the TTA colour images read whole get (a slide would take 1.5-4x as long)
        options = dataclasses.replace(options, kind=kind, colour_tta=1)
        if kind == "fluorescence" and has_colour(window):  # a colour composite: run as grey
            intensity = intensity_range(fluorescence_grey(window))
    if instance_options is not None:
        instance_options = instance_options.for_kind(kind)
    options, intensity = with_stain(window, options, intensity,
                                    pixels=image.shape[0] * image.shape[1])
    if options.diameter is None:
        return options, instance_options, intensity, None
    most = ({"max_scaled_pixels": window.shape[0] * window.shape[1] * HUGE_UPSCALE_LIMIT**2}
            if options.diameter == "auto" else {})
    check = segment_checked(model, window, config, options, instance_options, intensity,
                            **most)[2]
    return (dataclasses.replace(options, diameter=None, scale=check.scale), instance_options,
            intensity, check)


@dataclasses.dataclass
class BlockRun:
    """A huge image under way: `blocks` yields (Block, final core labels uint32) in raster
    order as they are done; `table` holds the measurements (complete once `blocks` is
    exhausted), `previews` the mask and overlay previews when asked for. `options`: with the
    image's one scale fixed; `check`: summary.csv's check row of the scale window (None
    without a diameter); `unsure`: whether that window's first pass was unsure (its size
    estimate weak); `count`: the blocks planned; `core`, `halo`: their size in pixels."""

    blocks: object
    table: NucleusTable
    previews: Previews | None
    intensity: tuple[float, float]
    options: PredictOptions
    check: dict | None
    count: int
    unsure: bool = False
    core: int = 0
    halo: int = 0


def segment_blocks(image, model, config: dict, options: PredictOptions | None = None,
                   instance_options=None, *, core: int | None = None, halo: int = HALO,
                   previews: bool = False, rows_done=None, segmented=None,
                   scale_model=None, masks=None) -> BlockRun:
    """Segment `image` (nucleiseg.io.wholeslide.LargeImage: read region by region) block by
    block -> BlockRun. `core`: the block size (default: as block_geometry finds for the tiles
    at the image's scale); `halo`: at the model's scale (block_geometry);
    `rows_done(rows)`: given the measurement rows of the nuclei that no later block can reach,
    as the rows of blocks are done; `segmented(blocks, options, instance_options, intensity)
    -> (core pixels, window labels) per block`: segments the blocks elsewhere (a Dask
    cluster) with the scale and post-processing fixed here; `scale_model`: the model that
    fixes them (default `model`); `masks` (NucleusMasks): collects each nucleus's pixels, to
    be taken as its row is given to `rows_done`."""
    options = options or PredictOptions()
    intensity = image.intensity()
    options, instance_options, intensity, check = fix_scale(
        image, model if scale_model is None else scale_model, config, options,
        instance_options, intensity)
    core, halo = block_geometry(options.scale, options.tile, options.overlap, halo,
                                image.shape[:2], core)
    table = NucleusTable()
    shown = Previews.for_shape(image.shape, image.dtype) if previews else None

    def segment(window):
        try:
            return segment_block(window, model, config, options, instance_options, intensity)
        except MemoryError:
            raise file_error(image.path, "not enough memory to segment a block; try a smaller "
                             "--tile") from None

    elsewhere = (None if segmented is None else
                 lambda blocks: segmented(blocks, options, instance_options, intensity))
    on_row = None if rows_done is None else (lambda bottom: rows_done(table.rows(bottom)))
    blocks = label_blocks(image, segment, core, halo, table, shown, on_row=on_row,
                          segmented=elsewhere, masks=masks)
    count = sum(len(row) for row in plan_blocks(*image.shape[:2], core, halo))
    return BlockRun(blocks, table, shown, intensity, options,
                    None if check is None else check.row(), count,
                    check is not None and check.unsure, core, halo)

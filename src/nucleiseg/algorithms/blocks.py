"""Huge images in bounded memory: whole-slide TIFFs and OME-Zarr, segmented block by block.

An image too large to read whole is cut into blocks (`plan_blocks`). Each block is read with a
halo around its core, segmented on its own (`segment_block`: the same prediction and nucleus
separation as a whole image, with the image's one intensity range), and only its core is kept.
`stitch` then finds which of the block's nuclei are nuclei already numbered by the blocks done
before it (the labels those wrote over part of this block's window), so a nucleus crossing a
seam keeps one number and is never cut or counted twice; the others get new numbers.

Both functions work on NumPy arrays only, so a parallel (Dask) path can call them per block as
they are; `label_blocks` runs them in a loop, in raster order, holding only the strips of
labels the next blocks need. The labels are written as they come (a tiled BigTIFF, or an NGFF
`labels/nuclei` image inside the input OME-Zarr), measurements are added up block by block
(pixel moments are sums), and the mask and overlay are downsampled previews.

Exactness: a nucleus is segmented the same in a block as in the whole image when the halo
holds all of it and the model's context around it (the default halo, 128 px, is for nuclei up
to about 90 px across). Blocks then give exactly the whole image's nuclei, renumbered (tested).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

HALO = 128  # pixels read around each block's core: > the largest nucleus + the model's context
ALIGN = 256  # block cores are multiples of the output tile (TIFF tiles, Zarr chunks)
PREVIEW_SIDE = 4096  # longest side of the mask and overlay previews of a huge image


# ---------------------------------------------------------------- the block plan


@dataclasses.dataclass(frozen=True)
class Block:
    """One block: its core (the pixels it labels) and its window (core + halo, inside the
    image), both as (top, bottom, left, right) in image coordinates; (row, col) in the plan."""

    row: int
    col: int
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def window_slices(self) -> tuple[slice, slice]:
        top, bottom, left, right = self.window
        return slice(top, bottom), slice(left, right)

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """Where the core lies inside the window's array."""
        (top, bottom, left, right), (wtop, _, wleft, _) = self.core, self.window
        return slice(top - wtop, bottom - wtop), slice(left - wleft, right - wleft)


def choose_core(tile: int = 512, overlap: int = 64, halo: int = HALO, shape=None,
                smallest: int = 2048, largest: int = 4096) -> int:
    """The block core (a multiple of ALIGN) for which the model's tiles over all windows
    (core + halo) cover the fewest pixels, then the windows are smallest: the halo's extra
    work kept small (about 10-20% more tiles than the image read whole). `shape` (height,
    width): for that image; without it, per core pixel of an endless image."""
    from nucleiseg.algorithms.tiling import tile_layout

    def along(length, core):  # (tiles, window pixels) along one axis
        windows = [min(start + core + halo, length) - max(start - halo, 0)
                   for start in range(0, length, core)]
        return sum(model_pixels(w) for w in windows), sum(windows)

    def model_pixels(length):  # along one axis
        size, starts = tile_layout(length, tile, overlap)
        return size * len(starts)

    def cost(core):
        if shape is None:
            return model_pixels(core + 2 * halo) ** 2 / core**2, 0
        (tiles_y, pixels_y), (tiles_x, pixels_x) = along(shape[0], core), along(shape[1], core)
        return tiles_y * tiles_x, pixels_y * pixels_x

    return min(range(smallest, largest + 1, ALIGN), key=lambda core: (*cost(core), core))


def block_geometry(scale: float = 1.0, tile: int = 512, overlap: int = 64, halo: int = HALO,
                   shape=None, core: int | None = None) -> tuple[int, int]:
    """(core, halo) in the image's own pixels for blocks that are resized by `scale` for the
    model. The halo is `halo` pixels at the model's scale (nuclei and their context are
    smaller in the image when it is upscaled, larger when downscaled). Upscaled, the core
    shrinks by the scale, so a resized window holds no more pixels than an unscaled one and
    memory stays bounded whatever the scale; downscaled, blocks keep their usual size.
    `core`: given, only the halo is worked out; else as choose_core finds for `shape`."""
    halo = math.ceil(halo / scale)
    if core is None:
        shrink = max(1.0, scale)
        smallest, largest = (max(ALIGN, int(side / shrink) // ALIGN * ALIGN)
                             for side in (2048, 4096))
        core = choose_core(max(1, round(tile / scale)), round(overlap / scale), halo, shape,
                           smallest, largest)
    return core, halo


def plan_blocks(height: int, width: int, core: int, halo: int = HALO) -> list[list[Block]]:
    """Rows of blocks covering the image: cores of `core` x `core` pixels (the last row and
    column smaller), windows reaching `halo` pixels further where the image goes on."""
    if core % ALIGN or core < halo:
        raise ValueError(f"block core {core} must be a multiple of {ALIGN} and >= the halo")
    rows = []
    for row, top in enumerate(range(0, height, core)):
        bottom = min(top + core, height)
        blocks = []
        for col, left in enumerate(range(0, width, core)):
            right = min(left + core, width)
            window = (max(top - halo, 0), min(bottom + halo, height),
                      max(left - halo, 0), min(right + halo, width))
            blocks.append(Block(row, col, (top, bottom, left, right), window))
        rows.append(blocks)
    return rows


# ---------------------------------------------------------------- a block's seams


def stitch(labels: np.ndarray, context: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """(k, 2) pairs (block label, context label): the block's nuclei that are nuclei already
    numbered by its neighbours.

    `labels`: a block's labels over some area (its window); `context`: the labels the
    neighbouring blocks wrote over the same area (their cores), -1 where none has written yet.
    A block nucleus is the context nucleus that holds more than `min_share` of its pixels where
    the context is known (when both blocks segmented it alike: all of them). Several block
    nuclei may join one context nucleus; one block nucleus joins at most one.
    """
    known = (context >= 0) & (labels > 0)
    mine = labels[known].astype(np.int64)
    theirs = context[known].astype(np.int64)
    if mine.size == 0:
        return np.zeros((0, 2), np.int64)
    span = int(theirs.max()) + 1
    codes, counts = np.unique(mine * span + theirs, return_counts=True)
    pair_mine, pair_theirs = codes // span, codes % span
    total = np.bincount(pair_mine, weights=counts)
    candidate = pair_theirs > 0
    pair_mine, pair_theirs, counts = pair_mine[candidate], pair_theirs[candidate], counts[candidate]
    order = np.lexsort((-counts, pair_mine))  # per block nucleus, its largest overlap first
    first = np.ones(len(order), bool)
    first[1:] = pair_mine[order][1:] != pair_mine[order][:-1]
    best = order[first]
    joined = counts[best] > min_share * total[pair_mine[best]]
    return np.stack([pair_mine[best][joined], pair_theirs[best][joined]], axis=1)


def number_block(labels: np.ndarray, core: tuple[slice, slice], links: np.ndarray,
                 next_label: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Final numbers for a block: (core labels as uint32, the table block label -> final
    number, the next unused number). Linked nuclei (`stitch`) keep their neighbour's number;
    the others in the core get new ones, in the order of their block labels."""
    count = int(labels.max()) if labels.size else 0
    table = np.zeros(count + 1, np.uint32)
    if len(links):
        table[links[:, 0]] = links[:, 1]
    local = labels[core]
    present = np.bincount(local.ravel(), minlength=count + 1) > 0
    new = np.flatnonzero(present & (table == 0))
    new = new[new > 0]
    table[new] = np.arange(next_label, next_label + len(new), dtype=np.uint32)
    return table[local], table, next_label + len(new)


class Seams:
    """What the loop keeps of blocks already done: the final labels of the previous row's
    bottom `halo` rows (full width) and of the previous block's right `halo` columns."""

    def __init__(self, width: int, halo: int):
        self.halo = halo
        self.above = None  # (rows top, array halo x width) of the row before
        self.below = np.zeros((halo, width), np.uint32)
        self.left = None  # (block, array of its core's last halo columns)

    def context(self, block: Block) -> np.ndarray:
        """The labels written over `block`'s window so far; -1 where nothing is written."""
        wtop, wbottom, wleft, wright = block.window
        top, bottom, left, _ = block.core
        context = np.full((wbottom - wtop, wright - wleft), -1, np.int64)
        if self.above is not None and wtop < top:
            start, strip = self.above
            context[:top - wtop] = strip[wtop - start:top - start, wleft:wright]
        if self.left is not None and wleft < left:
            strip = self.left
            context[top - wtop:bottom - wtop, :left - wleft] = strip[:, wleft - left:]
        return context

    def remember(self, block: Block, core_labels: np.ndarray) -> None:
        top, bottom, left, right = block.core
        keep = min(self.halo, bottom - top)
        self.below[self.halo - keep:, left:right] = core_labels[bottom - top - keep:]
        self.left = core_labels[:, -self.halo:] if right - left >= self.halo else None

    def next_row(self, block: Block) -> None:
        bottom = block.core[1]
        self.above = (bottom - self.halo, self.below)
        self.below = np.zeros_like(self.below)
        self.left = None


# ---------------------------------------------------------------- measurements, added up


class NucleusTable:
    """Per final number: the pixel moments and bounding box of a nucleus, added up block by
    block; rows come out in number order once no later block can reach a nucleus."""

    KEYS = ("area", "y", "x", "yy", "xx", "xy", "intensity")

    def __init__(self):
        self.base = 1  # the first number not yet given out as a row
        self.sums = np.zeros((len(self.KEYS), 0))
        self.boxes = np.zeros((0, 4), np.int64)
        self.reach = np.zeros(0, np.int64)  # the lowest row each nucleus reaches, as segmented
        self.top = 0  # the highest number added
        self.count = 0
        self.total_area = 0.0

    def _grow(self, top: int) -> None:
        size = top - self.base + 1
        if size > self.sums.shape[1]:
            extra = max(size, 2 * self.sums.shape[1]) - self.sums.shape[1]
            self.sums = np.concatenate([self.sums, np.zeros((len(self.KEYS), extra))], axis=1)
            far = np.iinfo(np.int64).max
            fresh = np.tile(np.array([far, far, -1, -1], np.int64), (extra, 1))
            self.boxes = np.concatenate([self.boxes, fresh])
            self.reach = np.concatenate([self.reach, np.zeros(extra, np.int64)])

    def add_block(self, local: np.ndarray, table: np.ndarray, image: np.ndarray,
                  origin: tuple[int, int], reach: np.ndarray | None = None) -> None:
        """Add one block's core: `local` its labels (block numbers), `table` block number ->
        final number, `image` its raw pixels, `origin` its top-left corner in the image,
        `reach` per block number the row below the nucleus in the whole window (default: in
        the core), so a nucleus is complete only once the rows it reaches are done."""
        from scipy import ndimage

        from nucleiseg.algorithms.instances import pixel_moments

        sums = pixel_moments(local, image)
        present = np.flatnonzero(sums["area"][1:]) + 1
        if not len(present):
            return
        y0, x0 = origin
        area, y, x = (sums[key][present] for key in ("area", "y", "x"))
        shifted = {  # moments about the image origin, from those about the block's corner
            "area": area, "y": y + y0 * area, "x": x + x0 * area,
            "yy": sums["yy"][present] + 2 * y0 * y + y0 * y0 * area,
            "xx": sums["xx"][present] + 2 * x0 * x + x0 * x0 * area,
            "xy": sums["xy"][present] + x0 * y + y0 * x + x0 * y0 * area,
            "intensity": sums["intensity"][present],
        }
        slices = ndimage.find_objects(local)
        boxes = np.array([(s[0].start + y0, s[1].start + x0, s[0].stop + y0, s[1].stop + x0)
                          for s in (slices[i - 1] for i in present)], np.int64)
        final = table[present].astype(np.int64)
        self.top = max(self.top, int(final.max()))
        self._grow(self.top)
        at = final - self.base
        for index, key in enumerate(self.KEYS):
            np.add.at(self.sums[index], at, shifted[key])
        np.minimum.at(self.boxes[:, 0], at, boxes[:, 0])
        np.minimum.at(self.boxes[:, 1], at, boxes[:, 1])
        np.maximum.at(self.boxes[:, 2], at, boxes[:, 2])
        np.maximum.at(self.boxes[:, 3], at, boxes[:, 3])
        np.maximum.at(self.reach, at, boxes[:, 2] if reach is None else reach[present])

    def rows(self, done_below: int | None = None) -> list[dict]:
        """Rows of the nuclei whose pixels all lie above image row `done_below` (None: all),
        from the first not yet given out up to the first that is not complete; they are
        dropped from the table."""
        from nucleiseg.algorithms.instances import nucleus_rows

        held = self.top - self.base + 1
        if held <= 0:
            return []
        complete = (np.ones(held, bool) if done_below is None
                    else self.reach[:held] <= done_below)
        stop = held if complete.all() else int(np.argmin(complete))
        if stop == 0:
            return []
        ids = np.arange(self.base, self.base + stop)
        rows = nucleus_rows(ids, dict(zip(self.KEYS, self.sums[:, :stop])), self.boxes[:stop])
        self.sums, self.boxes, self.reach = self.sums[:, stop:], self.boxes[stop:], \
            self.reach[stop:]
        self.base += stop
        self.count += stop
        self.total_area += sum(row["area"] for row in rows)
        return rows


class NucleusMasks:
    """Per final number: the nucleus's pixels as a boolean mask over its bounding box, put
    together from the block cores it spans (for its outline), until `take` hands it out: when
    NucleusTable gives out its row, no later block can reach it. Memory: the nuclei whose rows
    are not out yet (about two rows of blocks' worth)."""

    def __init__(self):
        self.held = {}  # number -> (top, left, mask)

    def __len__(self) -> int:
        return len(self.held)

    def add_block(self, local: np.ndarray, table: np.ndarray, origin: tuple[int, int]) -> None:
        """Add one block's core: `local` its labels (block numbers), `table` block number ->
        final number, `origin` its top-left corner in the image."""
        from scipy import ndimage

        y0, x0 = origin
        for index, box in enumerate(ndimage.find_objects(local), start=1):
            if box is None:
                continue
            number = int(table[index])
            piece = (box[0].start + y0, box[1].start + x0, local[box] == index)
            earlier = self.held.get(number)
            self.held[number] = piece if earlier is None else joined(earlier, piece)

    def take(self, number: int) -> tuple[tuple[int, int], np.ndarray]:
        """((row, column) of the mask's top-left pixel in the image, mask) of a nucleus, no
        longer held."""
        top, left, mask = self.held.pop(int(number))
        return (top, left), mask


def joined(a: tuple, b: tuple) -> tuple:
    """(top, left, mask) of two pieces of one nucleus (from different block cores) together."""
    top, left = min(a[0], b[0]), min(a[1], b[1])
    bottom = max(a[0] + a[2].shape[0], b[0] + b[2].shape[0])
    right = max(a[1] + a[2].shape[1], b[1] + b[2].shape[1])
    mask = np.zeros((bottom - top, right - left), bool)
    for ptop, pleft, piece in (a, b):
        mask[ptop - top:ptop - top + piece.shape[0], pleft - left:pleft - left + piece.shape[1]] \
            |= piece
    return top, left, mask


# ---------------------------------------------------------------- the single-process loop


@dataclasses.dataclass
class Previews:
    """Every `step`-th pixel of the image and of the labels (the mask and overlay previews)."""

    step: int
    image: np.ndarray
    labels: np.ndarray

    @classmethod
    def for_shape(cls, shape, dtype, side: int = PREVIEW_SIDE) -> Previews:
        height, width, channels = shape
        step = max(1, math.ceil(max(height, width) / side))
        size = (-(-height // step), -(-width // step))
        return cls(step, np.zeros((*size, channels), dtype), np.zeros(size, np.uint32))

    def add(self, block: Block, image: np.ndarray, labels: np.ndarray) -> None:
        top, _, left, _ = block.core
        dy, dx = -top % self.step, -left % self.step
        rows, cols = labels[dy::self.step, dx::self.step].shape
        at = (slice((top + dy) // self.step, (top + dy) // self.step + rows),
              slice((left + dx) // self.step, (left + dx) // self.step + cols))
        self.labels[at] = labels[dy::self.step, dx::self.step]
        self.image[at] = image[dy::self.step, dx::self.step]


def label_blocks(image, segment, core: int, halo: int = HALO, table=None,
                 previews: Previews | None = None, on_row=None, segmented=None, masks=None):
    """Segment `image` block by block in raster order; yields (block, final core labels
    uint32). `segment(window pixels) -> block labels` is segment_block with the model and
    the image's intensity range bound. Nuclei are numbered 1..N once across the image.
    `table` (NucleusTable), `previews` and `masks` (NucleusMasks, with a table) collect
    measurements, previews and the nuclei's pixels as blocks pass; `on_row(bottom)` is called
    when the rows above `bottom` are final.

    `segmented(blocks) -> (core pixels, window labels) per block, in the order given`
    segments the blocks elsewhere (Dask: nucleiseg.integrations.dask), in parallel; without
    it, each block is read and segmented here when its turn comes. Either way the blocks are
    stitched and numbered here, in raster order, so the labels are the same."""
    plan = plan_blocks(*image.shape[:2], core, halo)
    flat = [block for row in plan for block in row]
    done = iter(segmented(flat) if segmented is not None else read_and_segment(image, segment,
                                                                               flat))
    seams = Seams(image.shape[1], halo)
    next_label = 1
    for row in plan:
        for block in row:
            pixels, labels = next(done)
            links = stitch(labels, seams.context(block))
            if table is not None:  # a nucleus given out as a row already cannot grow
                links = links[links[:, 1] >= table.base]
            inner = block.core_in_window
            core_labels, numbers, next_label = number_block(labels, inner, links, next_label)
            seams.remember(block, core_labels)
            if table is not None:
                table.add_block(labels[inner], numbers, pixels, block.core[::2],
                                lowest_rows(labels, block.window[0]))
            if masks is not None:
                masks.add_block(labels[inner], numbers, block.core[::2])
            if previews is not None:
                previews.add(block, pixels, core_labels)
            del pixels, labels
            yield block, core_labels
        seams.next_row(row[-1])
        if on_row is not None:
            on_row(row[-1].core[1])


def read_and_segment(image, segment, blocks):
    """(core pixels, window labels) of each block, read and segmented one at a time in a
    helper thread: the next block while the caller stitches and writes this one (never more
    than one ahead, so memory stays bounded)."""
    from concurrent.futures import ThreadPoolExecutor

    def work(block):
        window = image.read(*block.window)
        return window[block.core_in_window], segment(window)

    blocks = iter(blocks)
    helper = ThreadPoolExecutor(1, thread_name_prefix="nucleiseg-block")
    try:
        ahead = next((helper.submit(work, block) for block in blocks), None)
        while ahead is not None:
            done = ahead.result()
            ahead = next((helper.submit(work, block) for block in blocks), None)
            yield done
            del done
    finally:  # stopped early (an error, Ctrl-C) or done: no block is left running
        helper.shutdown(wait=True, cancel_futures=True)


def lowest_rows(labels: np.ndarray, top: int) -> np.ndarray:
    """Per label 0..max, the image row below its lowest pixel (`labels` from row `top`)."""
    from scipy import ndimage

    reach = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            reach[index] = box[0].stop + top
    return reach

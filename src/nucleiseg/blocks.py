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

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from nucleiseg.errors import DataError, file_error

HALO = 128  # pixels read around each block's core: > the largest nucleus + the model's context
ALIGN = 256  # block cores are multiples of the output tile (TIFF tiles, Zarr chunks)
PREVIEW_SIDE = 4096  # longest side of the mask and overlay previews of a huge image
BLOCKWISE_PIXELS = 8192 * 8192  # tiled TIFFs above this are segmented block by block
LARGE_SUFFIXES = (".svs",)  # whole-slide TIFF files that are always read block by block


def blockwise_pixels() -> int:
    return int(os.environ.get("NUCLEISEG_BLOCKWISE_PIXELS", BLOCKWISE_PIXELS))


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
    (core + halo) are fewest, then the windows smallest: the halo's extra work kept small
    (about 10-20% more tiles than the image read whole). `shape` (height, width): for that
    image; without it, per core pixel of an endless image."""
    from nucleiseg.tiling import tile_starts

    def along(length, core):  # (tiles, window pixels) along one axis
        windows = [min(start + core + halo, length) - max(start - halo, 0)
                   for start in range(0, length, core)]
        return sum(len(tile_starts(w, tile, overlap)) for w in windows), sum(windows)

    def cost(core):
        if shape is None:
            return len(tile_starts(core + 2 * halo, tile, overlap)) ** 2 / core**2, 0
        (tiles_y, pixels_y), (tiles_x, pixels_x) = along(shape[0], core), along(shape[1], core)
        return tiles_y * tiles_x, pixels_y * pixels_x

    return min(range(smallest, largest + 1, ALIGN), key=lambda core: (*cost(core), core))


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


# ---------------------------------------------------------------- one block, and its seams


def segment_block(window: np.ndarray, model, config: dict, options=None,
                  instance_options=None, intensity: tuple[float, float] | None = None
                  ) -> np.ndarray:
    """int32 labels (1..n in this block only) of one block's window: its core and halo, raw
    pixels (H, W, C) as read. `intensity`: the whole image's intensity_range, the same for
    every block (without it, the window's own, which differs from block to block)."""
    from nucleiseg.infer import segment_image

    return segment_image(model, window, config, options, instance_options, intensity)


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

        from nucleiseg.instances import pixel_moments

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
        from nucleiseg.instances import nucleus_rows

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


# ---------------------------------------------------------------- reading huge images lazily


def is_zarr_image(path: Path) -> bool:
    """A folder named *.zarr (OME-Zarr image)."""
    return Path(path).suffix.lower() == ".zarr" and Path(path).is_dir()


def is_large_input(path: Path) -> bool:
    """Whether `path` is segmented block by block: an OME-Zarr folder, an SVS file, or a tiled
    TIFF with more than NUCLEISEG_BLOCKWISE_PIXELS (default 8192 x 8192) pixels. A file that
    cannot be opened is not (reading it whole reports why)."""
    path = Path(path)
    if is_zarr_image(path) or path.suffix.lower() in LARGE_SUFFIXES:
        return True
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].pages[0]
            spatial = [n for axis, n in zip(tif.series[0].axes, tif.series[0].shape)
                       if axis in "YX"]
            return bool(page.is_tiled) and math.prod(spatial) > blockwise_pixels()
    except Exception:
        return False


class LargeImage:
    """A huge image read region by region: `shape` (H, W, C), `dtype`, `read(top, bottom,
    left, right)` -> (h, w, C) array, `levels` (lower-resolution arrays, largest first) and,
    for OME-Zarr, the group and multiscales metadata the labels are written beside."""

    def __init__(self, path: Path, kind: str, arrays: list, axes: str, closer=None,
                 group=None, multiscales: dict | None = None):
        self.path, self.kind, self.arrays, self.axes = Path(path), kind, arrays, axes
        self.group, self.multiscales, self._closer = group, multiscales, closer
        sizes = dict(zip(axes, arrays[0].shape))
        for axis, size in sizes.items():
            if axis not in "YXC" and size > 1:
                shape = " x ".join(f"{n} ({a})" for a, n in sizes.items())
                raise file_error(path, f"a stack of images ({shape}), not one 2-D image; save "
                                 "each plane as its own image")
        channels = sizes.get("C", 1)
        if channels not in (1, 3, 4):
            raise file_error(path, f"{channels} channels: expected a grey, RGB or RGBA image")
        self.shape = (sizes["Y"], sizes["X"], channels)
        self.dtype = np.dtype(arrays[0].dtype)
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)):
            raise file_error(path, f"unsupported pixel type {self.dtype}")
        if self.shape[0] < 2 or self.shape[1] < 2:
            raise file_error(path, f"image is too small ({self.shape[0]}x{self.shape[1]} pixels)")

    def _region(self, array, rows: slice, cols: slice) -> np.ndarray:
        index = tuple(rows if axis == "Y" else cols if axis == "X" else
                      slice(None) if axis == "C" else 0 for axis in self.axes)
        kept = [axis for axis in self.axes if axis in "YXC"]
        try:
            data = np.asarray(array[index])
        except MemoryError:
            raise file_error(self.path, "not enough memory to read a block") from None
        except Exception as exc:  # every codec and store has its own exception types
            raise file_error(self.path, f"cannot read pixels {rows.start}:{rows.stop} x "
                             f"{cols.start}:{cols.stop} ({type(exc).__name__}: {exc})") from None
        data = np.moveaxis(data, [kept.index(a) for a in "YXC" if a in kept],
                           range(len(kept)))
        return data if data.ndim == 3 else data[..., None]

    def read(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        return self._region(self.arrays[0], slice(top, bottom), slice(left, right))

    def intensity(self) -> tuple[float, float]:
        """The whole image's intensity_range: from the smallest level with at least
        EXACT_PIXELS pixels, else from a regular grid of level 0's pixels (the same grid
        intensity_range takes on an image read whole)."""
        from nucleiseg.preprocess import EXACT_PIXELS, intensity_range

        height, width = self.shape[:2]
        candidates = [a for a in self.arrays[1:] if self._area(a) >= EXACT_PIXELS]
        if candidates:
            level = min(candidates, key=self._area)
            sample = self._region(level, slice(None), slice(None))
        else:
            step = max(1, math.ceil(math.sqrt(height * width / EXACT_PIXELS)))
            sample = self._region(self.arrays[0], slice(None, None, step),
                                  slice(None, None, step))
        return intensity_range(sample)

    def _area(self, array) -> int:
        sizes = dict(zip(self.axes, array.shape))
        return sizes["Y"] * sizes["X"]

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


def open_large(path: Path) -> LargeImage:
    """Open a whole-slide TIFF or an OME-Zarr image for reading region by region; DataError
    naming the file if it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "no such file or folder")
    try:
        import zarr
    except ImportError:
        raise file_error(path, "reading huge images block by block needs zarr, which "
                         "nucleiseg installs: pip install --upgrade nucleiseg") from None
    opener = _open_ome_zarr if path.is_dir() else _open_tiff
    try:
        return opener(path, zarr)
    except DataError:
        raise
    except MemoryError:
        raise file_error(path, "not enough memory to open this image") from None
    except Exception as exc:
        what = "an OME-Zarr image" if path.is_dir() else "a TIFF image"
        raise file_error(path, f"cannot read as {what} ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None


def _open_tiff(path: Path, zarr) -> LargeImage:
    import tifffile

    if path.stat().st_size == 0:
        raise file_error(path, "empty file (0 bytes)")
    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes = series.axes.upper().replace("S", "C")
        levels = [zarr.open(series.aszarr(level=k), mode="r") for k in range(len(series.levels))]
        return LargeImage(path, "tiff", levels, axes, closer=tif.close)
    except BaseException:
        tif.close()
        raise


def _open_ome_zarr(path: Path, zarr) -> LargeImage:
    group = zarr.open_group(str(path), mode="r")
    attributes = dict(group.attrs)
    metadata = attributes.get("ome", attributes)
    multiscales = metadata.get("multiscales")
    if not multiscales:
        raise file_error(path, "not an OME-Zarr image (no multiscales metadata); a "
                         "plate or a bioformats2raw folder: pass the image inside it")
    multiscale = multiscales[0]
    arrays = [group[dataset["path"]] for dataset in multiscale["datasets"]]
    axes = multiscale.get("axes", ["t", "c", "z", "y", "x"][-arrays[0].ndim:])
    names = "".join((a["name"] if isinstance(a, dict) else a)[0].upper() for a in axes)
    if len(names) != arrays[0].ndim or "Y" not in names or "X" not in names:
        raise file_error(path, f"axes {names!r} do not fit the array's shape {arrays[0].shape}")
    return LargeImage(path, "ome-zarr", arrays, names, group=group, multiscales=multiscale)


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


def label_blocks(image: LargeImage, segment, core: int, halo: int = HALO, table=None,
                 previews: Previews | None = None, on_row=None, segmented=None):
    """Segment `image` block by block in raster order; yields (block, final core labels
    uint32). `segment(window pixels) -> block labels` is segment_block with the model and
    the image's intensity range bound. Nuclei are numbered 1..N once across the image.
    `table` (NucleusTable) and `previews` collect measurements and previews as blocks pass;
    `on_row(bottom)` is called when the rows above `bottom` are final.

    `segmented(blocks) -> (core pixels, window labels) per block, in the order given`
    segments the blocks elsewhere (a Dask cluster: nucleiseg.distributed), in parallel; without
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
            if previews is not None:
                previews.add(block, pixels, core_labels)
            del pixels, labels
            yield block, core_labels
        seams.next_row(row[-1])
        if on_row is not None:
            on_row(row[-1].core[1])


def read_and_segment(image: LargeImage, segment, blocks):
    """(core pixels, window labels) of each block, read and segmented here, one at a time."""
    for block in blocks:
        window = image.read(*block.window)
        yield window[block.core_in_window], segment(window)


def lowest_rows(labels: np.ndarray, top: int) -> np.ndarray:
    """Per label 0..max, the image row below its lowest pixel (`labels` from row `top`)."""
    from scipy import ndimage

    reach = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            reach[index] = box[0].stop + top
    return reach


# ---------------------------------------------------------------- writing the labels


def tiff_tiles(blocks, width: int, tile: int = ALIGN, level: int = 1):
    """zlib-encoded (tile x tile) uint32 label tiles in raster order, from label_blocks'
    (block, core labels): a row of blocks is held encoded until its last block is done."""
    import zlib

    across = -(-width // tile)
    pending: dict[tuple[int, int], bytes] = {}
    for block, labels in blocks:
        top, bottom, left, right = block.core
        for y in range(0, bottom - top, tile):
            for x in range(0, right - left, tile):
                piece = labels[y:y + tile, x:x + tile]
                if piece.shape != (tile, tile):
                    piece = np.pad(piece, ((0, tile - piece.shape[0]), (0, tile - piece.shape[1])))
                pending[(top + y) // tile, (left + x) // tile] = zlib.compress(
                    np.ascontiguousarray(piece, "<u4").tobytes(), level)
        if right == width:  # the row of blocks is complete: give out its tile rows
            for tile_row in range(top // tile, -(-bottom // tile)):
                for tile_col in range(across):
                    yield pending.pop((tile_row, tile_col))


def write_tiff_labels(path: Path, shape: tuple[int, int], blocks) -> None:
    """A tiled (256 x 256, zlib) uint32 BigTIFF of the labels label_blocks yields, written
    atomically as they come."""
    import tifffile

    from nucleiseg.io import atomic_write

    def write(tmp):
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            tif.write(tiff_tiles(blocks, shape[1]), shape=shape, dtype=np.uint32,
                      tile=(ALIGN, ALIGN), compression="zlib", photometric="minisblack",
                      metadata=None)

    atomic_write(path, write)


class ZarrLabels:
    """An NGFF label image `labels/<name>` inside an OME-Zarr image: as many levels as the
    image (every 2nd, 4th... label of level 0), its axes with a channel of 1, uint32, chunks
    of 256 x 256; built in a hidden folder beside it and renamed into place by `commit`."""

    def __init__(self, image: LargeImage, name: str = "nuclei"):
        import zarr

        self.image, self.name = image, name
        self.root = image.path / "labels"
        self.root.mkdir(exist_ok=True)
        self.partial = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        self.format = image.group.metadata.zarr_format
        self.group = zarr.open_group(str(self.partial), mode="w", zarr_format=self.format)
        height, width = image.shape[:2]
        self.arrays, self.steps = [], []
        for index, array in enumerate(image.arrays):
            sizes = dict(zip(image.axes, array.shape))
            step = max(1, round(height / sizes["Y"]))
            shape = tuple(sizes[a] if a in "YX" else 1 for a in image.axes)
            chunks = tuple(ALIGN if a in "YX" else 1 for a in image.axes)
            extra = ({"dimension_names": [a.lower() for a in image.axes]}
                     if self.format == 3 else {})
            self.arrays.append(self.group.create_array(
                str(index), shape=shape, chunks=chunks, dtype="uint32", fill_value=0, **extra))
            self.steps.append((step, max(1, round(width / sizes["X"]))))

    def add(self, block: Block, labels: np.ndarray) -> None:
        top, _, left, _ = block.core
        for array, (sy, sx) in zip(self.arrays, self.steps):
            dy, dx = -top % sy, -left % sx
            part = labels[dy::sy, dx::sx]
            y, x = (top + dy) // sy, (left + dx) // sx
            shape = dict(zip(self.image.axes, array.shape))
            part = part[:shape["Y"] - y, :shape["X"] - x]
            if part.size:
                index = tuple(slice(y, y + part.shape[0]) if a == "Y" else
                              slice(x, x + part.shape[1]) if a == "X" else 0
                              for a in self.image.axes)
                array[index] = part

    def commit(self) -> None:
        import zarr

        multiscale = dict(self.image.multiscales)
        multiscale["name"] = self.name
        multiscale.pop("metadata", None)
        multiscale.pop("type", None)
        multiscale["datasets"] = [{**dataset, "path": str(index)} for index, dataset in
                                  enumerate(self.image.multiscales["datasets"])]
        version = multiscale.get("version", "0.5" if self.format == 3 else "0.4")
        label = {"image-label": {"version": version, "source": {"image": "../../"}}}
        ome = {"multiscales": [multiscale], **label}
        if self.format == 3:
            multiscale.pop("version", None)
            self.group.attrs.update({"ome": {"version": version, **ome}})
        else:
            self.group.attrs.update(ome)
        final = self.root / self.name
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.name}.old.", dir=self.root))
            os.replace(final, old / self.name)
        os.replace(self.partial, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        labels = zarr.open_group(str(self.root), mode="a", zarr_format=self.format)
        listed = dict(labels.attrs)
        if self.format == 3:
            ome = dict(listed.get("ome", {"version": version}))
            ome["labels"] = sorted(set(ome.get("labels", [])) | {self.name})
            labels.attrs.update({"ome": ome})
        else:
            labels.attrs.update({"labels": sorted(set(listed.get("labels", [])) | {self.name})})

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


# ---------------------------------------------------------------- a huge image, end to end


def zarr_labels_path(image_path: Path, name: str = "nuclei") -> Path:
    return Path(image_path) / "labels" / name


def segment_large_file(model, record: dict, path: Path, paths: dict, options=None,
                       instance_options=None, halo: int = HALO, core: int | None = None,
                       segmented=None):
    """predict_files' segment_file for a huge image: (PredictionResult, measurement rows).
    Labels: a tiled BigTIFF at paths['labels'] (TIFF input) or labels/nuclei inside the
    OME-Zarr input; mask and overlay: previews (longest side <= 4096); rows: streamed from a
    temporary file as they were measured, so memory stays flat however many nuclei.
    `segmented(blocks, options, intensity)`: segments the blocks elsewhere (label_blocks), with
    the image's one scale and intensity range; `model` then only fixes the scale."""
    from nucleiseg.infer import PredictionResult, PredictOptions
    from nucleiseg.io import write_png
    from nucleiseg.viz import outline_overlay

    start = time.perf_counter()
    options = options or PredictOptions()
    image = open_large(path)
    try:
        spool = RowSpool(Path(paths["mask"]).parent)
    except BaseException:
        image.close()
        raise
    core = core or choose_core(options.tile, options.overlap, halo, image.shape[:2])
    try:
        intensity = image.intensity()
        options, check = fix_scale(image, model, record["config"], options, instance_options,
                                   intensity)
        table, previews = NucleusTable(), Previews.for_shape(image.shape, image.dtype)

        def segment(window):
            try:
                return segment_block(window, model, record["config"], options,
                                     instance_options, intensity)
            except MemoryError:
                raise file_error(path, "not enough memory to segment a block; try a smaller "
                                 "--tile") from None

        elsewhere = (None if segmented is None else
                     lambda blocks: segmented(blocks, options, intensity))
        blocks = label_blocks(image, segment, core, halo, table, previews,
                              on_row=lambda bottom: spool.write(table.rows(bottom)),
                              segmented=elsewhere)
        if image.kind == "ome-zarr":
            writer = ZarrLabels(image)
            try:
                for block, labels in blocks:
                    writer.add(block, labels)
                spool.write(table.rows())
                writer.commit()
            except BaseException:
                writer.discard()
                raise
        else:
            write_tiff_labels(paths["labels"], image.shape[:2], blocks)
            spool.write(table.rows())
        mask = (previews.labels > 0).astype(np.uint8) * 255
        write_png(paths["mask"], mask)
        write_png(paths["overlay"], outline_overlay(previews.image, previews.labels,
                                                    *intensity))
    except BaseException:
        spool.close()
        raise
    finally:
        image.close()
    mean = table.total_area / table.count if table.count else 0.0
    result = PredictionResult(path, table.count, mean, time.perf_counter() - start,
                              check=check)
    return result, spool.rows()


SCALE_SAMPLE = 2048  # side of the central window a huge image's nucleus size is estimated on


def fix_scale(image, model, config: dict, options, instance_options, intensity):
    """One scale for every block of a huge image (blocks must agree at their seams): with
    `--diameter auto` or a diameter, decided on a central SCALE_SAMPLE² window as for any
    image; (options with that fixed scale, the window's check row for summary.csv)."""
    import dataclasses

    from nucleiseg.infer import segment_checked

    if options.diameter is None:
        return options, None
    height, width = image.shape[:2]
    top, left = max(0, (height - SCALE_SAMPLE) // 2), max(0, (width - SCALE_SAMPLE) // 2)
    window = image.read(top, min(height, top + SCALE_SAMPLE), left,
                        min(width, left + SCALE_SAMPLE))
    check = segment_checked(model, window, config, options, instance_options, intensity)[2]
    return dataclasses.replace(options, diameter=None, scale=check.scale), check.row()


def measure_saved_large(path: Path, labels_path: Path, earlier: dict, core: int = 4096):
    """--resume for a huge image: its rows measured block by block from the saved labels."""
    from nucleiseg.infer import PredictionResult, display_name

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
    from nucleiseg.scale import CHECK_COLUMNS

    mean = table.total_area / table.count if table.count else 0.0
    earlier_row = earlier.get(display_name(path), {})
    seconds = float(earlier_row.get("seconds") or 0.0)
    check = {key: earlier_row.get(key, "") for key in CHECK_COLUMNS}
    return PredictionResult(path, table.count, mean, seconds, resumed=True,
                            check=check), spool.rows()


class RowSpool:
    """Measurement rows kept in a temporary file until the image is done, then given back one
    by one (a failed image leaves none in measurements.csv)."""

    def __init__(self, folder: Path):
        import csv

        from nucleiseg.instances import COLUMNS

        self.handle = tempfile.TemporaryFile("w+", newline="", encoding="utf-8", dir=folder)
        self.writer = csv.DictWriter(self.handle, fieldnames=list(COLUMNS))

    def write(self, rows) -> None:
        self.writer.writerows(rows)

    def rows(self):
        import csv

        from nucleiseg.instances import COLUMNS

        self.handle.seek(0)
        with self.handle:
            yield from csv.DictReader(self.handle, fieldnames=list(COLUMNS))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()

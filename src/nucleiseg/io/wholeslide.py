"""Huge images read region by region, and their labels written block by block: whole-slide
TIFFs (tiled, pyramidal; SVS) and OME-Zarr images, with zarr (the 'large' extra)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.blocks import ALIGN
from nucleiseg.errors import DataError, file_error

BLOCKWISE_PIXELS = 8192 * 8192  # default: tiled TIFFs above this go block by block
LARGE_SUFFIXES = (".svs",)  # whole-slide TIFF files that are always read block by block


def is_zarr_image(path: Path) -> bool:
    """A folder named *.zarr (OME-Zarr image)."""
    return Path(path).suffix.lower() == ".zarr" and Path(path).is_dir()


def is_large_input(path: Path, blockwise_pixels: int = BLOCKWISE_PIXELS) -> bool:
    """Whether `path` is segmented block by block: an OME-Zarr folder, an SVS file, or a tiled
    TIFF with more than `blockwise_pixels` (default 8192 x 8192; predict --blockwise-pixels)
    pixels. A file that cannot be opened is not (reading it whole reports why)."""
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
            return bool(page.is_tiled) and math.prod(spatial) > blockwise_pixels
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
        from nucleiseg.algorithms.preprocess import EXACT_PIXELS, intensity_range

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

    from nucleiseg.io.runfiles import atomic_write

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

    def add(self, block, labels: np.ndarray) -> None:
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


def zarr_labels_path(image_path: Path, name: str = "nuclei") -> Path:
    return Path(image_path) / "labels" / name


class RowSpool:
    """Measurement rows kept in a temporary file until the image is done, then given back one
    by one (a failed image leaves none in measurements.csv)."""

    def __init__(self, folder: Path):
        import csv

        from nucleiseg.algorithms.instances import COLUMNS

        self.handle = tempfile.TemporaryFile("w+", newline="", encoding="utf-8", dir=folder)
        self.writer = csv.DictWriter(self.handle, fieldnames=list(COLUMNS))

    def write(self, rows) -> None:
        self.writer.writerows(rows)

    def rows(self):
        import csv

        from nucleiseg.algorithms.instances import COLUMNS

        self.handle.seek(0)
        with self.handle:
            yield from csv.DictReader(self.handle, fieldnames=list(COLUMNS))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()

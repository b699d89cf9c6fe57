"""napari reader: images as nucleiseg reads them, and nucleiseg's `*_labels.tif` outputs.

* An image file (PNG, TIFF, OME-TIFF, JPEG): one Image layer, or one per channel for a
  multi-channel file (named by the OME channel names), z-stacks and time series as extra
  dimensions, the pixel size in µm as the layer's scale.
* A huge image (a whole-slide TIFF above 8192², an SVS file, an OME-Zarr folder): a lazy
  multiscale Image layer, read region by region as napari shows it (nucleiseg.io.wholeslide).
* `<stem>_labels.tif` (what `nucleiseg predict` writes): a Labels layer; its `features` are the
  rows of `measurements.csv` beside it for that image (2-D images), so hovering a nucleus shows
  its measurements.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nucleiseg.io.images import IMAGE_SUFFIXES
from nucleiseg.io.wholeslide import BLOCKWISE_PIXELS

LABELS_SUFFIXES = ("_labels.tif", "_labels.tiff")


def get_reader(path):
    """The reader for `path` (a path or a list of them), or None when nucleiseg cannot read it
    (so napari asks another reader)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(readable(p) for p in paths):
        return None
    return read_layers


def readable(path) -> bool:
    from nucleiseg.io.wholeslide import LARGE_SUFFIXES, is_zarr_image

    path = Path(path)
    return is_zarr_image(path) or (path.is_file() and path.suffix.lower() in
                                   (*IMAGE_SUFFIXES, *LARGE_SUFFIXES))


def read_layers(path, blockwise_pixels: int = BLOCKWISE_PIXELS) -> list[tuple]:
    """Layer data tuples of a path or a list of them; tiled TIFFs with more than
    `blockwise_pixels` pixels (and OME-Zarr, SVS) open lazily, level by level."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for item in map(Path, paths):
        layers += read_path(item, blockwise_pixels)
    return layers


def read_path(path: Path, blockwise_pixels: int = BLOCKWISE_PIXELS) -> list[tuple]:
    """napari layer data tuples [(data, kwargs, layer type)] for one file or folder."""
    from nucleiseg.io.wholeslide import is_large_input

    if path.name.lower().endswith(LABELS_SUFFIXES):
        return [read_labels(path, blockwise_pixels)]
    if is_large_input(path, blockwise_pixels):
        return [read_large(path)]
    return read_image_layers(path)


def layer_name(path: Path) -> str:
    from nucleiseg.pipeline.outputs import output_stem

    return output_stem(path).removesuffix(".ome") if path.is_dir() else output_stem(path)


def read_image_layers(path: Path) -> list[tuple]:
    """An image file as nucleiseg reads it (io.images.read_pixels): (*planes, Y, X[, S])."""
    from nucleiseg.io.images import read_pixels

    array, info = read_pixels(path)
    name = layer_name(path)
    kwargs: dict = {"name": name, "metadata": {"nucleiseg_path": str(path)}}
    if info.pixel_size_um is not None:
        kwargs["metadata"]["pixel_size_um"] = info.pixel_size_um
    axes = info.axes
    rgb = axes.endswith("S") and info.rgb and array.shape[-1] in (3, 4)
    if axes.endswith("S") and not rgb:  # channels stored interleaved: make them an axis
        array, axes = np.moveaxis(array, -1, 0), "C" + axes[:-1]
    spatial = 3 if rgb else 2
    planes = array.ndim - spatial
    if "C" in axes and array.ndim > spatial:
        channel_axis = axes.index("C")
        count = array.shape[channel_axis]
        names = info.channel_names if len(info.channel_names) == count else ("",) * count
        kwargs["channel_axis"] = channel_axis
        kwargs["name"] = [f"{name} [{label or index}]" for index, label in enumerate(names)]
        planes -= 1
    if info.pixel_size_um is not None:
        kwargs["scale"] = (1.0,) * planes + tuple(info.pixel_size_um)
    kwargs["rgb"] = bool(rgb)
    return [(array, kwargs, "image")]


def read_large(path: Path) -> tuple:
    """A huge image as a lazy multiscale layer: Dask arrays over the file's levels."""
    import dask.array as da

    from nucleiseg.io.wholeslide import open_large

    image = open_large(path)  # the file stays open while napari shows it
    levels = []
    for array in image.arrays:
        lazy = da.from_array(array, chunks=getattr(array, "chunks", None) or "auto")
        index = tuple(slice(None) if axis in "YXC" else 0 for axis in image.axes)
        kept = [axis for axis in image.axes if axis in "YXC"]
        lazy = da.moveaxis(lazy[index], [kept.index(a) for a in "YXC" if a in kept],
                           range(len(kept)))
        if lazy.ndim == 3 and lazy.shape[-1] == 1:
            lazy = lazy[..., 0]
        levels.append(lazy)
    rgb = levels[0].ndim == 3
    return (levels, {"name": layer_name(path), "multiscale": True, "rgb": rgb,
                     "metadata": {"nucleiseg_path": str(path)}}, "image")


def read_labels(path: Path, blockwise_pixels: int = BLOCKWISE_PIXELS) -> tuple:
    """A `*_labels.tif` output as a Labels layer, with its measurements as features."""
    from nucleiseg.io.wholeslide import is_large_input

    if is_large_input(path, blockwise_pixels):
        data, kwargs, _ = read_large(path)
        kwargs.pop("rgb")
    else:
        from nucleiseg.io.images import read_pixels

        data, info = read_pixels(path)
        kwargs = {"name": Path(path).name.rsplit(".", 1)[0]}
        if info.pixel_size_um is not None:
            kwargs["scale"] = (1.0,) * (data.ndim - 2) + tuple(info.pixel_size_um)
        if data.ndim == 2:
            features = saved_features(path)
            if features is not None:
                kwargs["features"] = features
    return data, kwargs, "labels"


def saved_features(labels_path: Path) -> dict | None:
    """The rows of measurements.csv beside a 2-D `<stem>_labels.tif` whose image has that
    stem, as columns ('index': the label); None without that file or rows."""
    from nucleiseg.pipeline.outputs import output_stem

    table = Path(labels_path).with_name("measurements.csv")
    name = Path(labels_path).name
    stem = name[: name.lower().rindex("_labels")]
    if not table.is_file():
        return None
    with open(table, newline="", encoding="utf-8", errors="replace") as handle:
        rows = [row for row in csv.DictReader(handle)
                if output_stem(Path(row.get("image", ""))) == stem and not row.get("plane")]
    if not rows:
        return None
    columns: dict[str, list] = {"index": [int(row["label"]) for row in rows]}
    for key in rows[0]:
        if key in ("image", "label", "plane", "t", "z"):
            continue
        values = [row[key] for row in rows]
        try:
            columns[key] = np.array([float(v) if v != "" else np.nan for v in values])
        except ValueError:
            columns[key] = values
    columns["index"] = np.array(columns["index"], np.int64)
    return columns

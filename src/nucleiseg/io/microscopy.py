"""What a microscopy file holds besides pixels: its axes (channels, z-planes, time points),
channel names and physical pixel size, from OME-TIFF and ImageJ TIFF metadata, and the choices
that turn it into 2-D images to segment (which channel, each plane or a projection).

Axes use tifffile's letters: Y, X (the image), C (channels stored as planes), S (samples per
pixel: RGB, or channels stored interleaved), Z, T (planes, time points) and others (I, Q, ...:
pages tifffile cannot name). `nucleiseg.io.images.read_pixels` returns an array whose axes are the
stack and channel axes in file order, then Y, X, then S (if any).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from nucleiseg.errors import file_error

PLANE_MODES = ("each", "max", "mean", "stitch")  # stitch: each plane, linked in 3-D
DEFAULT_CELL_MAX_DISTANCE = 30.0  # pixels: --cells channel:NAME without a distance
CHANNEL_AXES = "CS"
# micrometres per unit, for OME's PhysicalSizeXUnit and ImageJ's unit (names as written)
UNITS_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
            "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "Å": 1e-4,
            "pm": 1e-6}


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What we know about an image file besides its pixels."""

    axes: str  # of the array read_pixels returns: stack and channel axes, then "YX", then "S"
    channel_names: tuple[str, ...] = ()  # from OME metadata, "" where unnamed; () if none
    pixel_size_um: tuple[float, float] | None = None  # (y, x) micrometres per pixel
    rgb: bool = False  # the samples (S) are RGB(A) colour, as in PNG/JPEG or photometric RGB
    z_step_um: float | None = None  # µm between z-planes, when known

    @property
    def plane_axes(self) -> str:
        """The axes that number 2-D planes (Z, T, ...), in file order."""
        return "".join(axis for axis in self.axes if axis not in "YX" + CHANNEL_AXES)


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How to turn a file into images to segment: the nuclear channel (index or OME name;
    None: grey or 8-bit colour files only), what to do with z-stacks and time series (segment
    each plane, or a max/mean projection), a pixel size in µm that overrides the file's, and
    the most pixels per plane a file may claim (None: nucleiseg.io.images.MAX_PIXELS, 16384²;
    a larger header is a damaged file or a decompression bomb)."""

    channel: int | str | None = None
    planes: str = "each"
    pixel_size: float | None = None
    max_pixels: int | None = None
    cells: CellsSpec | None = None  # predict --cells: grow the nuclei into cells
    measure_channels: tuple[int | str, ...] | str | None = None  # "all" or indices/names

    def __post_init__(self):
        if self.planes not in PLANE_MODES:
            raise ValueError(f"planes must be one of {', '.join(PLANE_MODES)}; "
                             f"got {self.planes!r}")

    @property
    def needs_channels(self) -> bool:
        """Whether the file's other channels are read too (--measure-channels, --cells
        channel:...)."""
        return self.measure_channels is not None or (
            self.cells is not None and self.cells.channel is not None)


@dataclasses.dataclass(frozen=True)
class CellsSpec:
    """predict --cells: grow each nucleus by up to `distance` (µm when the pixel size is known,
    else pixels), or within the stain of `channel` (index or OME name) up to `max_distance`
    (same units; None: DEFAULT_CELL_MAX_DISTANCE pixels)."""

    distance: float | None = None
    channel: int | str | None = None
    max_distance: float | None = None


def parse_cells(text: str) -> CellsSpec:
    """--cells DISTANCE or channel:NAME|INDEX[:MAXDIST]."""
    text = text.strip()
    if text.lower().startswith("channel:"):
        rest = text[len("channel:"):]
        name, colon, tail = rest.rpartition(":")
        distance = None
        if colon:
            try:
                distance = float(tail)
            except ValueError:
                name = rest
            else:
                if not math.isfinite(distance) or distance < 0:
                    raise ValueError(f"--cells {text}: the distance must be >= 0")
        else:
            name = rest
        if not name.strip():
            raise ValueError(f"--cells {text}: name the channel (channel:NAME or channel:INDEX)")
        return CellsSpec(channel=parse_channel(name), max_distance=distance)
    try:
        distance = float(text)
    except ValueError:
        raise ValueError(f"--cells {text!r}: expected a distance or channel:NAME|INDEX[:MAXDIST]"
                         ) from None
    if not math.isfinite(distance) or distance < 0:
        raise ValueError(f"--cells {text}: the distance must be >= 0")
    return CellsSpec(distance=distance)


def parse_channel_list(text: str) -> tuple[int | str, ...] | str:
    """--measure-channels: "all", or indices and names separated by commas."""
    if text.strip().lower() == "all":
        return "all"
    items = tuple(parse_channel(item) for item in text.split(",") if item.strip())
    if not items:
        raise ValueError("--measure-channels: give 'all' or channel indices or names")
    return items


def parse_channel(text: str) -> int | str:
    """--channel: "1" -> 1 (0-based index); anything else is a channel name."""
    text = text.strip()
    return int(text) if text.isdigit() else text


# ---------------------------------------------------------------- reading metadata


def standard_axes(array: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Drop axes of length 1 (but never Y or X) and order the rest: stack and channel axes in
    file order, then Y, X, then S."""
    keep = [i for i, axis in enumerate(axes) if axis in "YX" or array.shape[i] > 1]
    order = ([i for i in keep if axes[i] not in "YXS"]
             + [axes.index(a) for a in "YX"] + [i for i in keep if axes[i] == "S"])
    squeezed = array.reshape([n for i, n in enumerate(array.shape) if i in keep])
    remap = {old: new for new, old in enumerate(keep)}
    return (np.transpose(squeezed, [remap[i] for i in order]),
            "".join(axes[i] for i in order))


def tiff_metadata(path, tif, series) -> dict:
    """channel_names, pixel_size_um and rgb of the first series of an open tifffile.TiffFile,
    from its OME-XML or ImageJ metadata (pixel size only from those: a plain TIFF's resolution
    is usually a printing resolution, not the microscope's)."""
    page = series.pages[0] if series.pages else tif.pages[0]
    photometric = int(getattr(page, "photometric", 0))
    found = {"channel_names": (), "pixel_size_um": None,
             "rgb": photometric in (2, 6)}  # RGB, YCbCr (JPEG): decoded to RGB
    if tif.is_ome and tif.ome_metadata:
        import tifffile

        try:
            document = tifffile.xml2dict(tif.ome_metadata)
        except Exception as exc:  # xml.etree's ParseError, or anything xml2dict meets
            raise file_error(path, f"damaged OME-XML metadata ({type(exc).__name__}: "
                             f"{exc})") from None
        found.update(ome_metadata(document))
    elif tif.is_imagej and tif.imagej_metadata is not None:
        found["pixel_size_um"] = imagej_pixel_size(tif.imagej_metadata, page)
        if found["pixel_size_um"] is not None and "spacing" in tif.imagej_metadata:
            unit = str(tif.imagej_metadata.get("unit", "")).replace("\\u00B5", "µ")
            z_step = physical_size(tif.imagej_metadata["spacing"], unit)
            if z_step is not None:
                found["z_step_um"] = z_step
    return found


def ome_metadata(document: dict) -> dict:
    """Channel names and (y, x) pixel size in µm of the first image of an OME-XML document
    (as tifffile.xml2dict returns it)."""
    image = document.get("OME", {}).get("Image", {})
    image = image[0] if isinstance(image, list) else image
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    names = tuple(str(c.get("Name", "") or "") if isinstance(c, dict) else "" for c in channels)
    sizes = [physical_size(pixels.get(f"PhysicalSize{axis}"),
                           pixels.get(f"PhysicalSize{axis}Unit", "µm")) for axis in "YX"]
    found = {"channel_names": names if any(names) else (),
             "pixel_size_um": tuple(sizes) if None not in sizes else None}
    z_step = physical_size(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit", "µm"))
    if z_step is not None:
        found["z_step_um"] = z_step
    return found


def imagej_pixel_size(metadata: dict, page) -> tuple[float, float] | None:
    """(y, x) µm per pixel of an ImageJ TIFF: 1 / YResolution, 1 / XResolution, in `unit`."""
    unit = str(metadata.get("unit", "")).replace("\\u00B5", "µ")
    sizes = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.get(tag)
        try:
            numerator, denominator = value.value
            sizes.append(physical_size(denominator / numerator, unit))
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            return None
    return tuple(sizes) if None not in sizes else None


def physical_size(value, unit) -> float | None:
    """A pixel size in µm from a value and its unit; None if missing, unknown or not positive."""
    try:
        size = float(value) * UNITS_UM[str(unit).strip()]
    except (KeyError, TypeError, ValueError):
        return None
    return size if math.isfinite(size) and size > 0 else None


# ---------------------------------------------------------------- channels


def describe_channels(count: int, names=()) -> str:
    """"0 (DAPI), 1 (GFP)" or "0, 1, 2"."""
    names = tuple(names) if len(names) == count else ("",) * count
    return ", ".join(f"{i} ({name})" if name else str(i) for i, name in enumerate(names))


def channel_index(path, channel: int | str, count: int, names=(), option: str = "--channel"
                  ) -> int:
    """The index of `channel` (an index or a name, exact or in any case) among `count`;
    `option`: how errors name the option that asked for it."""
    names = tuple(names) if len(names) == count else ()
    listing = f"channels: {describe_channels(count, names)}" if count > 1 else "one channel"
    if isinstance(channel, int):
        if 0 <= channel < count:
            return channel
        raise file_error(path, f"{option} {channel} does not exist ({listing}; indices count "
                         "from 0)")
    matches = [i for i, name in enumerate(names) if name == channel] or [
        i for i, name in enumerate(names) if name.casefold() == channel.casefold()]
    if len(matches) == 1:
        return matches[0]
    if not names:
        raise file_error(path, f"{option} {channel!r}: this file names no channels ({listing}); "
                         "pass the channel's index")
    why = "several channels are named" if matches else "no channel named"
    raise file_error(path, f"{option} {channel!r}: {why} {channel!r} ({listing})")


def nuclear_channel(path, array: np.ndarray, info: ImageInfo, channel=None):
    """The image(s) to segment from a read_pixels array: (array, axes) with no channel axis
    left, except the trailing S of an 8-bit RGB(A) image without `channel` (kept in colour).
    Without `channel`, a file of two or more channels that is not 8-bit RGB(A) is refused with
    a message listing its channels. An image of one channel is its own nuclear channel, whatever
    `channel` says (so one --channel serves a folder of grey and multi-channel files)."""
    axes = info.axes
    present = [axis for axis in axes if axis in CHANNEL_AXES]
    if not present:
        return array, axes
    if len(present) > 1:
        sizes = " x ".join(f"{array.shape[axes.index(a)]} ({a})" for a in present)
        raise file_error(path, f"channels along two axes ({sizes}, tifffile axes {axes!r}); "
                         "save the nuclear channel as its own file")
    axis = axes.index(present[0])
    count = array.shape[axis]
    names = info.channel_names if len(info.channel_names) == count else ()
    if channel is None:
        if present[0] == "S" and info.rgb and count in (3, 4) and array.dtype == np.uint8:
            return array, axes  # colour, as stored
        note = (f" ({array.dtype} colour: only 8-bit RGB(A) is read in colour)"
                if info.rgb and present[0] == "S" else "")
        raise file_error(path, f"{count} channels: {describe_channels(count, names)}{note}; "
                         "pass --channel with the index or name of the nuclear stain")
    index = channel_index(path, channel, count, names)
    return np.take(array, index, axis=axis), axes.replace(present[0], "")


def all_channels(path, array: np.ndarray, info: ImageInfo, mode: str):
    """Every channel of a read_pixels array, channels last, planes kept or projected as
    `mode` says: (array (*planes, H, W, C), plane axes, channel names: one per channel, ""
    where unnamed). A grey image is one channel; colour samples are channels too."""
    axes = info.axes
    present = [axis for axis in axes if axis in CHANNEL_AXES]
    if len(present) > 1:
        raise file_error(path, "channels along two axes; save the channels along one")
    if present:
        array = np.moveaxis(array, axes.index(present[0]), -1)
        axes = axes.replace(present[0], "") + "S"
    else:
        array, axes = array[..., None], axes + "S"
    array, axes = project(array, axes, mode)
    count = array.shape[-1]
    names = info.channel_names if len(info.channel_names) == count else ("",) * count
    return array, axes.replace("S", "")[:-2], tuple(names)


# ---------------------------------------------------------------- planes


def project(array: np.ndarray, axes: str, mode: str) -> tuple[np.ndarray, str]:
    """Max or mean over the plane axes (all but Y, X, S); 'each' keeps them. The mean is
    float32."""
    lead = tuple(i for i, axis in enumerate(axes) if axis not in "YXS")
    if mode in ("each", "stitch") or not lead:
        return array, axes
    if mode == "max":
        array = array.max(axis=lead)
    else:
        array = array.mean(axis=lead, dtype=np.float64).astype(np.float32)
    return array, "".join(axis for axis in axes if axis in "YXS")


PLANE_COLUMNS = ("plane", "t", "z")


def plane_columns(axes: str, shape, flat: int | None) -> dict:
    """Measurement columns of one plane: its number in file order (0-based) and its T and Z
    indices; all empty for a 2-D image (flat None)."""
    if flat is None:
        return dict.fromkeys(PLANE_COLUMNS, "")
    index = dict(zip(axes, np.unravel_index(flat, shape))) if axes else {}
    return {"plane": flat, "t": int(index["T"]) if "T" in index else "",
            "z": int(index["Z"]) if "Z" in index else ""}


def format_pixel_size(size: tuple[float, float] | None) -> str:
    """summary.csv's pixel_size_um: "0.325", or "0.3x0.4" (y x x) for non-square pixels;
    empty when unknown."""
    if size is None:
        return ""
    y, x = (float(f"{v:.6g}") for v in size)
    return f"{x:g}" if y == x else f"{y:g}x{x:g}"

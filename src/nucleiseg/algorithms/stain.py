"""Stain normalisation of colour (H&E) images: Reinhard et al.'s colour transfer in CIELAB.

Each L*, a*, b* channel of an image is shifted and scaled to the mean and standard deviation
of a reference (the model's H&E training tiles, recorded with the model as
`stain_reference`), so a paler or bluer H&E stain reaches the model looking like the stain it
was trained on (E. Reinhard et al., "Color transfer between images", IEEE Computer Graphics
and Applications 21(5), 2001). Measured in docs/results.md (H&E histology).

The transfer is a function of each pixel alone once the image's own statistics are known, so
a huge image can be matched tile by tile with the statistics of one window and the tiles
agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

EXACT_PIXELS = 1 << 22  # statistics over every pixel up to 4 MP, a regular subsample above
STRIP_PIXELS = 1 << 20  # pixels converted at a time (CIELAB in float64: bounded memory)
TABLE_PIXELS = 1 << 25  # 8-bit images this large are matched through a colour table


@dataclasses.dataclass(frozen=True)
class StainReference:
    """Mean and standard deviation of L*, a*, b* to match images to."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_record(cls, record: dict | None) -> StainReference | None:
        found = (record or {}).get("stain_reference")
        return None if not found else cls(tuple(found["lab_mean"]), tuple(found["lab_std"]))

    def as_record(self, described: str) -> dict:
        return {"lab_mean": [round(v, 4) for v in self.mean],
                "lab_std": [round(v, 4) for v in self.std], "from": described}


@dataclasses.dataclass(frozen=True)
class StainMatch:
    """The transfer of one image (its own L*a*b* statistics) to a reference. `tabled`: 8-bit
    images are matched by look-up in a table of every colour (built once, about 10 s and 64
    MB; then about 30 ms a megapixel against 500: for huge images)."""

    source: StainReference
    target: StainReference
    tabled: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """RGB(A) image (8/16-bit or float in [0, 1]) -> the matched uint8 RGB image, converted
        in strips of rows so memory stays bounded whatever the size."""
        image = np.asarray(image)
        if self.tabled and image.dtype == np.uint8:
            table = colour_table(dataclasses.replace(self, tabled=False))
            rgb = image[..., :3].astype(np.int32)
            packed = np.take(table, (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
            out = np.empty((*image.shape[:2], 3), np.uint8)
            for channel, shift in enumerate((16, 8, 0)):
                out[..., channel] = packed >> shift
            return out
        return self.convert(image)

    def convert(self, image: np.ndarray) -> np.ndarray:
        """apply, pixel by pixel through CIELAB."""
        from skimage.color import lab2rgb

        out = np.empty((*image.shape[:2], 3), np.uint8)
        rows = max(1, STRIP_PIXELS // max(1, image.shape[1]))
        gain = np.divide(self.target.std, np.maximum(self.source.std, 1e-6))
        for top in range(0, image.shape[0], rows):
            lab = to_lab(image[top:top + rows])
            lab -= self.source.mean
            lab *= gain
            lab += self.target.mean
            rgb = lab2rgb(lab)
            out[top:top + rows] = np.round(np.clip(rgb, 0.0, 1.0) * 255)
        return out


@functools.lru_cache(maxsize=2)
def colour_table(match: StainMatch) -> np.ndarray:
    """The match of every 8-bit colour, packed: uint32 R << 16 | G << 8 | B at the index of
    the colour packed the same way (one look-up a pixel)."""
    levels = np.arange(256, dtype=np.uint8)
    green, blue = np.meshgrid(levels, levels, indexing="ij")
    table = np.empty(1 << 24, np.uint32)
    for red in range(256):  # 65,536 colours at a time
        matched = match.convert(np.stack([np.full_like(green, red), green, blue], -1))
        matched = matched.reshape(-1, 3).astype(np.uint32)
        table[red << 16:(red + 1) << 16] = (matched[:, 0] << 16) | (matched[:, 1] << 8) | \
            matched[:, 2]
    return table


def is_colour(image: np.ndarray) -> bool:
    """Whether an image is 8/16-bit colour (an RGB image whose channels differ): what is
    matched. Grey images, colour images whose channels are equal and float images (whose
    range is unknown) are left as they are."""
    from nucleiseg.algorithms.preprocess import image_kind

    image = np.asarray(image)
    return (image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype in (np.uint8, np.uint16)
            and image_kind(image) == "histology")


def to_lab(image: np.ndarray) -> np.ndarray:
    """RGB(A) pixels (8/16-bit integers over their full range, floats in [0, 1]) -> float64
    CIELAB."""
    from skimage.color import rgb2lab

    rgb = np.asarray(image)[..., :3]
    if np.issubdtype(rgb.dtype, np.integer):
        rgb = rgb / float(np.iinfo(rgb.dtype).max)
    else:
        rgb = np.clip(np.nan_to_num(rgb.astype(np.float64)), 0.0, 1.0)
    return rgb2lab(rgb)


def lab_statistics(image: np.ndarray) -> StainReference:
    """Mean and standard deviation of an image's L*, a*, b* (over a regular subsample of about
    EXACT_PIXELS pixels for larger images)."""
    image = np.asarray(image)
    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / EXACT_PIXELS)))
    lab = to_lab(image[::step, ::step]).reshape(-1, 3)
    return StainReference(tuple(float(v) for v in lab.mean(0)),
                          tuple(float(v) for v in lab.std(0)))


def reference_from(images) -> StainReference:
    """The reference of a set of H&E images: the mean of their per-image statistics."""
    stats = [lab_statistics(image) for image in images]
    if not stats:
        raise ValueError("a stain reference needs at least one colour image")
    return StainReference(tuple(float(v) for v in np.mean([s.mean for s in stats], 0)),
                          tuple(float(v) for v in np.mean([s.std for s in stats], 0)))


def stain_match(image: np.ndarray, reference: StainReference | None,
                pixels: int | None = None) -> StainMatch | None:
    """The transfer of `image` to `reference`, or None when there is nothing to match (no
    reference, or a grey image). `pixels`: how many pixels it will be applied to (default:
    the image's; a huge image's window: the whole image's), which decides `tabled`."""
    if reference is None or not is_colour(image):
        return None
    pixels = image.shape[0] * image.shape[1] if pixels is None else pixels
    return StainMatch(lab_statistics(image), reference,
                      tabled=np.asarray(image).dtype == np.uint8 and pixels >= TABLE_PIXELS)

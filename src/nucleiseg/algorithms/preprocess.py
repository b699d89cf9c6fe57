"""The one preprocessing path shared by training, evaluation and prediction."""

from __future__ import annotations

import math

import numpy as np

IMAGE_KINDS = ("fluorescence", "histology", "brightfield")
PERCENTILES = (1.0, 99.8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """H x W x C (C = 1, 3 or 4) -> H x W x 3: grey repeated, alpha dropped."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 4:
        return image[..., :3]
    if image.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
    return image


EXACT_PIXELS = 1 << 22  # percentiles over every pixel up to 4 MP, a regular subsample above


def intensity_range(image: np.ndarray, percentiles=PERCENTILES) -> tuple[float, float]:
    """The (low, high) per-image percentiles (over all channels, so colours keep their
    balance) that normalisation maps to 0 and 1. Above EXACT_PIXELS they are taken on a regular
    grid of about that many pixels, so large images need no image-sized float copy."""
    image = np.asarray(image)
    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / EXACT_PIXELS)))
    sample = to_rgb(image[::step, ::step])
    if sample.dtype in (np.uint8, np.uint16) and sample.size:
        return tuple(exact_percentiles(sample, percentiles))
    sample = sample.astype(np.float32)
    values = sample[np.isfinite(sample)]
    if values.size == 0:
        return 0.0, 0.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    return low, high


def apply_intensity_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] to [0, 1] (clipped) as float32 H x W x 3; non-finite pixels become 0.
    Works on any crop of an image, so large images can be normalised tile by tile."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:  # grey: scale one channel, then repeat it
        return np.repeat(apply_intensity_range(image[..., 0], low, high)[..., :1], 3, axis=-1)
    rgb = to_rgb(image) if image.ndim == 3 else image[..., None]
    if np.issubdtype(rgb.dtype, np.floating):  # in float64, so huge values cannot overflow
        scaled = (np.clip(rgb, low, high, dtype=np.float64) - low) / max(high - low, 1e-6)
        scaled = scaled.astype(np.float32)
        scaled[~np.isfinite(rgb)] = 0.0
    elif rgb.dtype in (np.uint8, np.uint16):  # one table look-up per pixel, same values
        scaled = intensity_table(rgb.dtype, low, high)[rgb]
    else:
        scaled = scale_integers(rgb, low, high)
    return scaled if scaled.shape[-1] == 3 else np.repeat(scaled, 3, axis=-1)


def scale_integers(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(values - low) / (high - low), clipped to [0, 1], in float32."""
    scaled = values.astype(np.float32)
    scaled -= np.float32(low)
    scaled /= np.float32(max(high - low, 1e-6))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def intensity_table(dtype, low: float, high: float) -> np.ndarray:
    """scale_integers of every value of an 8- or 16-bit type: normalising by look-up gives
    exactly the same floats, about 3x faster."""
    return scale_integers(np.arange(np.iinfo(dtype).max + 1, dtype=dtype), low, high)


def normalize_image(image: np.ndarray, percentiles=PERCENTILES) -> np.ndarray:
    """Any 8/16-bit or float image -> float32 H x W x 3 in [0, 1].

    Scales by per-image percentiles (intensity_range) instead of dividing by 255, so 16-bit and
    float data give the same model input as 8-bit data. Non-finite pixels become 0.
    """
    return apply_intensity_range(image, *intensity_range(image, percentiles))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (anti-aliased when shrinking) of an (H, W) or (H, W, C) image to `shape`
    (H, W), as float32: skimage.transform.resize(order=1, mode="reflect", anti_aliasing when
    shrinking) to 1e-6, one sparse matrix product per axis (4-16x faster than skimage, which
    interpolates the channel axis too; docs/performance.md)."""
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape[:2]
    rest = image.shape[2:]
    out_h, out_w = (int(n) for n in shape)
    if (height, width) == (out_h, out_w):
        return image
    if out_h != height:
        image = (resize_matrix(height, out_h) @ image.reshape(height, -1)).reshape(
            out_h, width, *rest)
    if out_w != width:
        across = np.moveaxis(image, 1, 0).reshape(width, -1)
        image = np.moveaxis((resize_matrix(width, out_w) @ across).reshape(
            out_w, out_h, *rest), 0, 1)
    return np.ascontiguousarray(image, dtype=np.float32)


def resize_matrix(length: int, size: int):
    """(size, length) sparse matrix that resizes an axis as skimage's order-1 resize does:
    a Gaussian of sigma (factor - 1) / 2 first when shrinking (anti-aliasing), then linear
    interpolation between pixel centres, both mirrored at the edges (numpy's "reflect")."""
    from scipy import sparse

    factor = length / size
    position = (np.arange(size) + 0.5) * factor - 0.5
    low = np.floor(position).astype(np.intp)
    weight = position - low
    rows = np.repeat(np.arange(size), 2)
    cols = mirrored(np.stack([low, low + 1], 1).ravel(), length)
    data = np.stack([1 - weight, weight], 1).ravel()
    if factor > 1:
        sigma = (factor - 1) / 2
        radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's truncate=4
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
        kernel /= kernel.sum()
        rows = np.repeat(rows, offsets.size)
        data = (data[:, None] * kernel[None]).ravel()
        cols = mirrored((cols[:, None] + offsets[None]).ravel(), length)
    return sparse.csr_matrix((data.astype(np.float32), (rows, cols)), shape=(size, length))


def mirrored(index: np.ndarray, length: int) -> np.ndarray:
    """Indices reflected into [0, length) about the edge pixels (d c b | a b c d | c b a)."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    index = np.abs(index) % period
    return np.where(index >= length, period - index, index)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label/class image: no new, blended label values."""
    from skimage.transform import resize

    if labels.shape[:2] == tuple(shape):
        return labels
    out = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True, mode="edge")
    return out.astype(labels.dtype)


def has_colour(image: np.ndarray) -> bool:
    """Whether an image's channels differ by more than 2% of its maximum somewhere."""
    rgb = to_rgb(np.asarray(image))
    exact = np.int32 if rgb.dtype in (np.uint8, np.uint16) else np.float32
    first = rgb[..., 0].astype(exact)
    colour = max(float(np.abs(rgb[..., c].astype(exact) - first).max()) for c in (1, 2))
    return colour > 0.02 * max(float(rgb.max()), 1.0)


def image_kind(image: np.ndarray) -> str:
    """Classify an image as 'fluorescence' (dark background: grey, or a colour composite such
    as blue DAPI), 'brightfield' (grey, bright background) or 'histology' (any other colour
    image, e.g. H&E)."""
    image = np.asarray(image)
    rgb = to_rgb(image)
    is_colour = has_colour(rgb)
    brightness = rgb.max(axis=-1) if is_colour else rgb[..., 0]  # a pixel's brightest channel
    low, median, high = exact_percentiles(brightness, (1, 50, 99))
    full_scale = 255.0 if image.dtype == np.uint8 else max(float(brightness.max()), 1e-6)
    dark = median <= 0.25 * full_scale
    if is_colour:  # a composite: mostly near-black background, its median pixel in the lowest
        # quarter of the range (DSB composites: at most 0.09). Not dense tissue (median 122 of
        # 70-236 on a MoNuSeg tile: 0.31, not dark), nor dim, noisy H&E (dark, 0.44-0.67)
        return ("fluorescence" if dark and median < low + 0.25 * (high - low)
                else "histology")
    return "fluorescence" if dark or median <= (low + high) / 2 else "brightfield"


def fluorescence_grey(image: np.ndarray) -> np.ndarray:
    """A fluorescence image as the grey the bundled general model was trained on: a colour
    composite (blue DAPI, or nuclei beside another stain) as its brightest channel at each
    pixel (H x W), a grey image as it is. Models given a colour composite as it is (0, 0, b)
    lost 0.13 AP@0.5 on blue copies of the DSB validation images (docs/robustness.md)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] < 3:
        return image
    return to_rgb(image).max(axis=-1)


def sampled_kind(image: np.ndarray, pixels: float = 1e6) -> str:
    """image_kind judged on a regular subsample of at most about `pixels` pixels."""
    image = np.asarray(image)
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / pixels)))
    return image_kind(image[::step, ::step])


def exact_percentiles(values: np.ndarray, qs) -> list[float]:
    """np.percentile(values, qs) (linear interpolation) as floats; for 8- and 16-bit values
    from their histogram, without sorting or a float copy (5x faster on a megapixel)."""
    values = np.asarray(values)
    if values.dtype not in (np.uint8, np.uint16):
        return [float(v) for v in np.percentile(values.astype(np.float32), qs)]
    cumulative = np.cumsum(np.bincount(values.ravel()))
    count = int(cumulative[-1])
    found = []
    for q in qs:
        index = q / 100 * (count - 1)
        below = math.floor(index)
        at = np.searchsorted(cumulative, [below, min(below + 1, count - 1)], side="right")
        found.append(float(at[0] + (at[1] - at[0]) * (index - below)))
    return found

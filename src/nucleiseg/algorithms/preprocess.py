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
    sample = to_rgb(image[::step, ::step]).astype(np.float32)
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
    """Bilinear resize (anti-aliased when shrinking) of a float image to `shape` (H, W)."""
    from skimage.transform import resize

    if image.shape[:2] == tuple(shape):
        return image.astype(np.float32, copy=False)
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, (*shape, *image.shape[2:]), order=1, anti_aliasing=shrink,
                 preserve_range=True, mode="reflect")
    return out.astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label/class image: no new, blended label values."""
    from skimage.transform import resize

    if labels.shape[:2] == tuple(shape):
        return labels
    out = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True, mode="edge")
    return out.astype(labels.dtype)


def image_kind(image: np.ndarray) -> str:
    """Classify an image as 'fluorescence' (grey, dark background), 'brightfield' (grey,
    bright background) or 'histology' (colour, e.g. H&E)."""
    rgb = to_rgb(np.asarray(image)).astype(np.float32)
    if np.abs(rgb - rgb[..., :1]).max() > 0.02 * max(float(rgb.max()), 1.0):
        return "histology"
    grey = rgb[..., 0]
    low, high = np.percentile(grey, (1, 99))
    full_scale = 255.0 if np.asarray(image).dtype == np.uint8 else max(float(grey.max()), 1e-6)
    median = float(np.median(grey))
    bright = median > (low + high) / 2 and median > 0.25 * full_scale
    return "brightfield" if bright else "fluorescence"

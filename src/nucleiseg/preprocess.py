"""The one preprocessing path shared by training, evaluation and prediction."""

from __future__ import annotations

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


def normalize_image(image: np.ndarray, percentiles=PERCENTILES) -> np.ndarray:
    """Any 8/16-bit or float image -> float32 H x W x 3 in [0, 1].

    Scales by per-image percentiles (over all channels, so colours keep their balance) instead
    of dividing by 255, so 16-bit and float data give the same model input as 8-bit data.
    Non-finite pixels become 0.
    """
    rgb = to_rgb(np.asarray(image)).astype(np.float32, copy=False)
    finite = np.isfinite(rgb)
    values = rgb[finite] if not finite.all() else rgb
    if values.size == 0:
        return np.zeros(rgb.shape, np.float32)
    low, high = (float(v) for v in np.percentile(values, percentiles))
    scaled = ((rgb - np.float32(low)) / np.float32(max(high - low, 1e-6))).astype(np.float32)
    scaled[~finite] = 0.0
    return np.clip(scaled, 0.0, 1.0, out=scaled)


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

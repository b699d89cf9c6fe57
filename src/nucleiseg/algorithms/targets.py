"""What a model is trained to predict, from instance labels: per-pixel classes (background,
nucleus, nucleus boundary) and the contact pixels between touching nuclei (NumPy and SciPy
only: `evaluate --classical` needs no TensorFlow)."""

from __future__ import annotations

import numpy as np

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def labels_to_classes(labels: np.ndarray, target: str = "binary") -> np.ndarray:
    """Instance labels -> per-pixel class targets.

    'binary': 0 background, 1 nucleus. 'boundary': 0 background, 1 nucleus interior,
    2 nucleus boundary (each nucleus's own outer pixel ring, so touching nuclei are parted by
    a two-pixel boundary line that a watershed can split them along).
    """
    from skimage.segmentation import find_boundaries

    classes = (labels > 0).astype(np.uint8)
    if target == "boundary":
        classes[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    elif target != "binary":
        raise ValueError(f"unknown target {target!r}")
    return classes


def contact_pixels(labels: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels with two different nuclei within `radius` (a (2r+1)^2 window): the lines where
    touching nuclei meet and the narrow gaps between them, nucleus and background pixels alike.
    Weighted up in the loss (the U-Net paper's border weights, in small), they teach the
    model the splits that the watershed needs."""
    from scipy import ndimage

    size = 2 * radius + 1
    labels = np.asarray(labels)
    largest = ndimage.maximum_filter(labels, size=size, mode="nearest")
    empty = np.iinfo(labels.dtype).max if labels.dtype.kind in "iu" else np.inf
    smallest = ndimage.minimum_filter(np.where(labels > 0, labels, empty), size=size,
                                      mode="nearest")
    return (smallest != empty) & (largest != smallest)

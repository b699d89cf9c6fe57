"""Files: images and masks, microscopy metadata, whole-slide and OME-Zarr images, outlines for
QuPath and Fiji, and the run's own files (written atomically).

The most used readers are importable from here (`from nucleiseg.io import read_image`).
"""

from nucleiseg.io.images import (
    bundled_sample,
    find_images,
    find_samples,
    read_image,
    read_label_mask,
    read_pixels,
    read_planes,
)

__all__ = ["bundled_sample", "find_images", "find_samples", "read_image", "read_label_mask",
           "read_pixels", "read_planes"]

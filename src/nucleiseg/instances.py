"""From class probabilities to separated, numbered nuclei, and their measurements."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class InstanceOptions:
    """Post-processing choices (see README for how the defaults were measured)."""

    foreground_threshold: float = 0.5  # P(nucleus) = 1 - P(background) above this is nucleus
    marker_threshold: float = 0.5  # P(interior) above this seeds one nucleus (3-class models)
    min_size: int = 15  # objects smaller than this many pixels are removed
    fill_holes: bool = True


def instance_options_from(record: dict | None, **overrides) -> InstanceOptions:
    """The model's tuned post-processing (its record's 'postprocessing'), else the defaults;
    overrides that are not None win."""
    tuned = (record or {}).get("postprocessing", {})
    values = {field.name: tuned.get(field.name, field.default)
              for field in dataclasses.fields(InstanceOptions)}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return InstanceOptions(**values)


def labels_from_probabilities(probabilities: np.ndarray,
                              options: InstanceOptions | None = None) -> np.ndarray:
    """(H, W, C) probabilities -> int32 label image (0 background, 1..N nuclei).

    3 classes (background / interior / boundary): connected interiors are the markers of a
    watershed over the foreground, so touching nuclei split along their boundary; a foreground
    region without any interior marker becomes one nucleus. 2 classes: connected components.
    """
    from scipy import ndimage
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    options = options or InstanceOptions()
    foreground = (1.0 - probabilities[..., 0]) > options.foreground_threshold
    if options.fill_holes:
        foreground = ndimage.binary_fill_holes(foreground)
    if probabilities.shape[-1] >= 3:
        interior = probabilities[..., 1]
        markers = label((interior > options.marker_threshold) & foreground, connectivity=1)
        labels = watershed(-interior, markers, mask=foreground)
        orphans = label(foreground & (labels == 0), connectivity=1)
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    else:
        labels = label(foreground, connectivity=1)
    if options.min_size > 1:
        too_small = np.bincount(labels.ravel()) < options.min_size
        too_small[0] = False
        labels[too_small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


MEASUREMENTS = ("label", "area", "centroid-0", "centroid-1", "bbox-0", "bbox-1", "bbox-2",
                "bbox-3", "equivalent_diameter_area", "eccentricity", "intensity_mean")
COLUMNS = ("label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x",
           "bbox_max_y", "bbox_max_x", "equivalent_diameter", "eccentricity", "mean_intensity")


def measure_nuclei(labels: np.ndarray, image: np.ndarray) -> list[dict]:
    """One row per nucleus: area, centroid, bounding box, equivalent diameter, eccentricity
    and mean intensity (of the raw image, channels averaged), in pixels."""
    from skimage.measure import regionprops_table

    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(axis=-1) if grey.shape[-1] in (3, 4) else grey[..., 0]
    table = regionprops_table(labels, intensity_image=grey,
                              properties=("label", "area", "centroid", "bbox",
                                          "equivalent_diameter_area", "eccentricity",
                                          "intensity_mean"))
    columns = [table[name] for name in MEASUREMENTS]
    return [dict(zip(COLUMNS, (v.item() for v in values))) for values in zip(*columns)]

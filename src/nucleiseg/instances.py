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


def quantise_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 in [0, 255] (uint8 input is returned as is).
    Post-processing works on these: a quarter of the memory of float32, same decisions up to
    1/255 of probability."""
    if probabilities.dtype == np.uint8:
        return probabilities
    return np.round(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)


def labels_from_probabilities(probabilities: np.ndarray,
                              options: InstanceOptions | None = None) -> np.ndarray:
    """(H, W, C) probabilities (float in [0, 1], or uint8 as from quantise_probabilities) ->
    int32 label image (0 background, 1..N nuclei, numbered in raster order of their regions).

    3 classes (background / interior / boundary): connected interiors are the markers of a
    watershed over the foreground, so touching nuclei split along their boundary; a foreground
    region without any interior marker becomes one nucleus. 2 classes: connected components.
    Each connected foreground region is processed in its own bounding box, so memory beyond the
    label image stays small even for 8192 x 8192 images.
    """
    from scipy import ndimage

    options = options or InstanceOptions()
    probabilities = quantise_probabilities(probabilities)
    foreground = probabilities[..., 0] < 255 - round(options.foreground_threshold * 255)
    if options.fill_holes:
        foreground = ndimage.binary_fill_holes(foreground)
    labels, count = ndimage.label(foreground, output=np.int32)  # connectivity 1
    del foreground
    marker_level = round(options.marker_threshold * 255)
    interior = probabilities[..., 1] if probabilities.shape[-1] >= 3 else None
    next_label = 0
    # New numbers are written negated, so they never clash with regions not yet visited.
    for region, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = labels[box]
        inside = window == region
        nuclei = (split_region(inside, interior[box], marker_level) if interior is not None
                  else inside.astype(np.int32))
        if options.min_size > 1:
            sizes = np.bincount(nuclei[inside])
            too_small = sizes < options.min_size
            too_small[0] = False
            nuclei[too_small[nuclei]] = 0
        kept = np.unique(nuclei[inside])
        kept = kept[kept > 0]
        renumber = np.zeros(int(nuclei.max()) + 1, np.int32)
        renumber[kept] = -np.arange(next_label + 1, next_label + len(kept) + 1, dtype=np.int32)
        window[inside] = renumber[nuclei[inside]]
        next_label += len(kept)
    np.negative(labels, out=labels)
    return labels


def split_region(inside: np.ndarray, interior: np.ndarray, marker_level: int) -> np.ndarray:
    """Nuclei (1..n) of one connected foreground region: a watershed on the interior
    probability from its connected marker areas; parts no marker reaches become nuclei of their
    own. One marker (the usual case) means one nucleus, without a watershed."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    markers, count = ndimage.label(inside & (interior > marker_level), output=np.int32)
    if count <= 1:
        return inside.astype(np.int32)
    nuclei = watershed(-interior.astype(np.int16), markers, mask=inside)
    orphans, extra = ndimage.label(inside & (nuclei == 0), output=np.int32)
    if extra:
        nuclei = np.where(orphans > 0, orphans + count, nuclei)
    return nuclei.astype(np.int32, copy=False)


MEASUREMENTS = ("label", "area", "centroid-0", "centroid-1", "bbox-0", "bbox-1", "bbox-2",
                "bbox-3", "equivalent_diameter_area", "eccentricity")
COLUMNS = ("label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x",
           "bbox_max_y", "bbox_max_x", "equivalent_diameter", "eccentricity", "mean_intensity")


def measure_nuclei(labels: np.ndarray, image: np.ndarray) -> list[dict]:
    """One row per nucleus: area, centroid, bounding box, equivalent diameter, eccentricity
    and mean intensity (of the raw image, channels averaged), in pixels."""
    from skimage.measure import regionprops_table

    table = regionprops_table(labels, properties=("label", "area", "centroid", "bbox",
                                                  "equivalent_diameter_area", "eccentricity"))
    columns = [table[name] for name in MEASUREMENTS]
    columns.append(mean_intensities(labels, image)[table["label"]])
    return [dict(zip(COLUMNS, (v.item() for v in values))) for values in zip(*columns)]


def mean_intensities(labels: np.ndarray, image: np.ndarray, rows: int = 512) -> np.ndarray:
    """Mean raw intensity (channels averaged) of every label value 0..max, summed strip by
    strip so no image-sized float copy is made."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image[..., :3] if image.shape[-1] in (3, 4) else image[..., :1]
    length = int(labels.max()) + 1
    sums, counts = np.zeros(length), np.zeros(length)
    for top in range(0, labels.shape[0], rows):
        strip = labels[top:top + rows].ravel()
        grey = channels[top:top + rows].astype(np.float64).mean(axis=-1).ravel()
        sums += np.bincount(strip, weights=grey, minlength=length)
        counts += np.bincount(strip, minlength=length)
    return sums / np.maximum(counts, 1)

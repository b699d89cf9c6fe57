"""From class probabilities to separated, numbered nuclei, and their measurements."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class InstanceOptions:
    """Post-processing choices (docs/design.md: how the defaults were measured)."""

    foreground_threshold: float = 0.5  # P(nucleus) = 1 - P(background) above this is nucleus
    marker_threshold: float = 0.5  # P(interior) above this seeds one nucleus (3-class models)
    min_size: int = 15  # objects smaller than this many pixels are removed
    fill_holes: bool = True
    # A marker splits where, at a higher P(interior) level, it breaks into two or more cores
    # of at least `min_split_size` pixels: touching nuclei whose interiors the model joined
    # at marker_threshold but kept apart at a more confident level (3-class models).
    split_levels: tuple[float, ...] = (0.8, 0.9)
    min_split_size: int = 80
    min_confidence: float = 0.0  # nuclei whose mean P(nucleus) is below this are removed
    # Other values for some image kinds (preprocess.image_kind), e.g. {"histology":
    # {"min_confidence": 0.6}}: H&E nuclei are paler to the model than fluorescent ones.
    by_kind: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):  # a record's JSON list, or any sequence, as a sorted tuple
        object.__setattr__(self, "split_levels", tuple(sorted(map(float, self.split_levels))))
        fields = {field.name for field in dataclasses.fields(self)} - {"by_kind"}
        for kind, values in self.by_kind.items():
            unknown = set(values) - fields
            if unknown:
                raise ValueError(f"post-processing for {kind}: unknown {sorted(unknown)}")

    def for_kind(self, kind: str) -> InstanceOptions:
        """These options as they apply to an image of `kind` (no by_kind left)."""
        return dataclasses.replace(self, **self.by_kind.get(kind, {}), by_kind={})


def instance_options_from(record: dict | None, **overrides) -> InstanceOptions:
    """The model's tuned post-processing (its record's 'postprocessing', with its values per
    image kind), else the defaults; overrides that are not None win, for every kind."""
    tuned = (record or {}).get("postprocessing", {})
    values = {field.name: tuned.get(field.name, field.default)
              for field in dataclasses.fields(InstanceOptions) if field.name != "by_kind"}
    given = {key: value for key, value in overrides.items() if value is not None}
    values.update(given)
    by_kind = {kind: {key: value for key, value in kind_values.items() if key not in given}
               for kind, kind_values in tuned.get("by_kind", {}).items()}
    return InstanceOptions(**values, by_kind={k: v for k, v in by_kind.items() if v})


# Connectivity 1 (4-connected pixels), as scipy.ndimage.label's default, given so that it is
# not built again on each of the thousands of calls for a large image (a tenth of their time).
FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


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
    Then nuclei under min_size pixels or under min_confidence mean P(nucleus) are removed.
    Each connected foreground region is processed in its own bounding box, so memory beyond the
    label image stays small even for 8192 x 8192 images.
    """
    from scipy import ndimage

    options = options or InstanceOptions()
    probabilities = quantise_probabilities(probabilities)
    foreground = probabilities[..., 0] < 255 - round(options.foreground_threshold * 255)
    if options.fill_holes:
        foreground = fill_holes(foreground)
    labels, count = ndimage.label(foreground, FOUR, output=np.int32)
    del foreground
    marker_level = round(options.marker_threshold * 255)
    split_levels = [round(level * 255) for level in options.split_levels]
    interior = probabilities[..., 1] if probabilities.shape[-1] >= 3 else None
    next_label = 0
    # New numbers are written negated, so they never clash with regions not yet visited.
    for region, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        window = labels[box]
        inside = window == region
        nuclei = (split_region(inside, interior[box], marker_level, split_levels,
                               options.min_split_size) if interior is not None
                  else inside.astype(np.int32))
        ids = nuclei[inside]
        sizes = np.bincount(ids)
        removed = sizes < options.min_size
        if options.min_confidence > 0:  # mean P(nucleus) = 1 - mean P(background)
            certainty = np.bincount(ids, weights=255 - probabilities[box][..., 0][inside])
            removed |= certainty < options.min_confidence * 255 * sizes
        kept = np.flatnonzero((sizes > 0) & ~removed)
        kept = kept[kept > 0]
        renumber = np.zeros(len(sizes), np.int32)
        renumber[kept] = -np.arange(next_label + 1, next_label + len(kept) + 1, dtype=np.int32)
        window[inside] = renumber[ids]
        next_label += len(kept)
    np.negative(labels, out=labels)
    return labels


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """scipy.ndimage.binary_fill_holes (background not 4-connected to the border becomes
    foreground), by labelling the background once instead of dilating step by step."""
    from scipy import ndimage

    background, count = ndimage.label(~mask, FOUR, output=np.int32)
    is_hole = np.ones(count + 1, bool)
    is_hole[0] = False  # the mask itself
    is_hole[background[0]] = is_hole[background[-1]] = False  # touches the border
    is_hole[background[:, 0]] = is_hole[background[:, -1]] = False
    hole = is_hole[background]
    hole |= mask
    return hole


def split_region(inside: np.ndarray, interior: np.ndarray, marker_level: int,
                 split_levels=(), min_split_size: int = 0) -> np.ndarray:
    """Nuclei (1..n) of one connected foreground region: a watershed on the interior
    probability from its connected marker areas (split by split_markers); parts no marker
    reaches become nuclei of their own. One marker (the usual case) means one nucleus, without
    a watershed. Levels are on the uint8 probability scale, like `interior`."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    markers, count = ndimage.label(inside & (interior > marker_level), FOUR, output=np.int32)
    if split_levels and count and np.count_nonzero(markers) >= 2 * min_split_size:
        markers, count = split_markers(markers, count, interior, split_levels, min_split_size)
    if count <= 1:
        return inside.astype(np.int32)
    nuclei = watershed(-interior.astype(np.int16), markers, mask=inside)
    orphans, extra = ndimage.label(inside & (nuclei == 0), FOUR, output=np.int32)
    if extra:
        nuclei = np.where(orphans > 0, orphans + count, nuclei)
    return nuclei.astype(np.int32, copy=False)


def split_markers(markers: np.ndarray, count: int, interior: np.ndarray, levels,
                  min_size: int) -> tuple[np.ndarray, int]:
    """Level by level, each marker holding two or more cores (connected areas with `interior`
    above the level) of at least `min_size` pixels is replaced by those cores; smaller cores
    are dropped from the markers (the watershed gives their pixels to a neighbour). Returns
    the new markers (1..count, connected and apart) and their count."""
    from scipy import ndimage

    for level in levels:
        cores, found = ndimage.label((markers > 0) & (interior > level), FOUR, output=np.int32)
        if found < 2:
            continue
        big = np.bincount(cores.ravel(), minlength=found + 1) >= max(min_size, 1)
        big[0] = False
        owner = np.zeros(found + 1, np.int32)  # the marker each core lies in (exactly one)
        owner[cores] = markers
        split = np.bincount(owner[big], minlength=count + 1) >= 2
        split[0] = False
        if not split.any():
            continue
        keep = (markers > 0) & ~split[markers]
        keep |= big[cores] & split[owner[cores]]
        markers, count = ndimage.label(keep, FOUR, output=np.int32)  # markers stay 4-apart
    return markers, count


COLUMNS = ("label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x",
           "bbox_max_y", "bbox_max_x", "equivalent_diameter", "eccentricity", "mean_intensity")


MICRON_COLUMNS = ("area_um2", "centroid_y_um", "centroid_x_um", "equivalent_diameter_um")


def in_micrometres(row: dict, pixel_size: tuple[float, float] | None) -> dict:
    """A measure_nuclei row's area, centroid and equivalent diameter in µm, for a (y, x) pixel
    size in µm; empty values when the pixel size is unknown (None)."""
    if pixel_size is None:
        return dict.fromkeys(MICRON_COLUMNS, "")
    y, x = pixel_size
    area = row["area"] * y * x
    return {"area_um2": area, "centroid_y_um": row["centroid_y"] * y,
            "centroid_x_um": row["centroid_x"] * x,
            "equivalent_diameter_um": float(np.sqrt(4 * area / np.pi))}


def measure_nuclei(labels: np.ndarray, image: np.ndarray) -> list[dict]:
    """One row per nucleus: area, centroid, bounding box (max exclusive), equivalent diameter,
    eccentricity (of the ellipse with the same second moments) and mean intensity (of the raw
    image, channels averaged), in pixels: scikit-image's regionprops definitions, computed from
    pixel moments summed strip by strip (fast, and no image-sized temporaries)."""
    from scipy import ndimage

    sums = pixel_moments(labels, image)
    present = np.flatnonzero(sums["area"][1:]) + 1
    boxes = ndimage.find_objects(labels)
    boxes = np.array([(b[0].start, b[1].start, b[0].stop, b[1].stop)
                      for b in (boxes[i - 1] for i in present)]).reshape(-1, 4)
    return nucleus_rows(present, {key: value[present] for key, value in sums.items()}, boxes)


def nucleus_rows(ids: np.ndarray, sums: dict, boxes: np.ndarray) -> list[dict]:
    """measure_nuclei's rows from each nucleus's pixel_moments sums (one entry per id, in
    image coordinates) and bounding box (k, 4: min y, min x, max y, max x exclusive): what
    block-by-block segmentation (nucleiseg.algorithms.blocks) adds up block by block."""
    area = sums["area"]
    mean_y, mean_x = sums["y"] / area, sums["x"] / area
    var_y = sums["yy"] / area - mean_y**2
    var_x = sums["xx"] / area - mean_x**2
    cov = sums["xy"] / area - mean_y * mean_x
    spread = np.sqrt(((var_y - var_x) / 2) ** 2 + cov**2)
    major, minor = (var_y + var_x) / 2 + spread, np.maximum((var_y + var_x) / 2 - spread, 0)
    eccentricity = np.where(major > 0, np.sqrt(1 - minor / np.where(major > 0, major, 1)), 0.0)
    columns = [ids, area, mean_y, mean_x, *np.asarray(boxes).reshape(-1, 4).T,
               np.sqrt(4 * area / np.pi), eccentricity, sums["intensity"] / area]
    return [dict(zip(COLUMNS, (v.item() for v in values))) for values in zip(*columns)]


def pixel_moments(labels: np.ndarray, image: np.ndarray, rows: int = 512) -> dict:
    """Per label value 0..max: pixel count, sums of y, x, y², x², xy and of the raw intensity
    (channels averaged), accumulated over strips of `rows` rows."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image[..., :3] if image.shape[-1] in (3, 4) else image[..., :1]
    length = int(labels.max()) + 1 if labels.size else 1
    sums = {key: np.zeros(length) for key in ("area", "y", "x", "yy", "xx", "xy", "intensity")}
    xs = np.arange(labels.shape[1], dtype=np.float64)
    for top in range(0, labels.shape[0], rows):
        strip = labels[top:top + rows]
        ys = np.arange(top, top + strip.shape[0], dtype=np.float64)[:, None]
        y, x = np.broadcast_to(ys, strip.shape).ravel(), np.broadcast_to(xs, strip.shape).ravel()
        flat = strip.ravel()
        grey = channels[top:top + rows].astype(np.float64).mean(axis=-1).ravel()
        for key, weights in (("area", None), ("y", y), ("x", x), ("yy", y * y),
                             ("xx", x * x), ("xy", x * y), ("intensity", grey)):
            sums[key] += np.bincount(flat, weights=weights, minlength=length)
    return sums

"""Cells from nuclei: grow each nucleus into the cell around it.

Two ways, both keeping the nucleus id for its cell (cell ``i`` belongs to nucleus ``i``):

- `expand_nuclei`: a fixed ring of ``distance`` pixels, split between neighbours (no second
  channel needed; CellProfiler's "Distance-N", skimage's ``expand_labels``).
- `cells_from_channel`: a watershed from the nuclei within a cytoplasm or membrane stain,
  limited to ``max_distance`` pixels of the nuclei (CellProfiler's "Propagation"-like idea).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import expand_labels, watershed


def _as_label_image(nuclei: np.ndarray) -> np.ndarray:
    nuclei = np.asarray(nuclei)
    if not np.issubdtype(nuclei.dtype, np.integer):
        raise ValueError(f"nuclei must be an integer label image, got dtype {nuclei.dtype}")
    if nuclei.size and nuclei.min() < 0:
        raise ValueError("nuclei must not hold negative ids")
    return nuclei


def expand_nuclei(nuclei: np.ndarray, distance: float,
                  spacing: float | tuple[float, ...] | None = None) -> np.ndarray:
    """Grow each nucleus outward by up to `distance` pixels without overlapping neighbours.

    A background pixel joins the nearest nucleus when that nucleus is within `distance`
    (in units of `spacing` when given, e.g. µm per pixel along each axis). Nucleus pixels
    keep their id, so cells never eat into a neighbouring nucleus. Returns cells with the
    nuclei's ids and dtype.
    """
    nuclei = _as_label_image(nuclei)
    if distance < 0:
        raise ValueError(f"distance must be >= 0, got {distance}")
    if not nuclei.any() or distance == 0:
        return nuclei.copy()
    cells = expand_labels(nuclei, distance=distance, spacing=1 if spacing is None else spacing)
    return cells.astype(nuclei.dtype, copy=False)


def cells_from_channel(nuclei: np.ndarray, channel: np.ndarray, max_distance: float,
                       threshold: float | None = None,
                       stain: Literal["cytoplasm", "membrane"] = "cytoplasm",
                       smoothing_sigma: float = 1.0) -> np.ndarray:
    """Grow nuclei into the cells a cytoplasm or membrane `channel` shows.

    Foreground (where cells may grow) is, within `max_distance` pixels of a nucleus:

    - ``stain="cytoplasm"`` (the cell body is bright): ``channel > threshold`` or a nucleus;
      the watershed runs on the inverted, smoothed channel, so neighbouring cells meet in the
      dim gap between them.
    - ``stain="membrane"`` (only the cell outline is bright): ``channel > threshold``, the dim
      areas that hold a nucleus (a cell's inside, also when the image edge cuts its outline),
      or a nucleus; the watershed runs on the smoothed channel itself, so neighbouring cells
      meet on the bright membrane between them. Where an outline has a gap, the cell leaks
      into the background up to `max_distance`.

    `threshold` defaults to Otsu's on the channel. The nuclei are the watershed's markers, so
    every cell grows from exactly one nucleus: every nucleus gets one cell with its id, each
    cell contains its whole nucleus (nucleus pixels are set to their own id afterwards), and
    no cell lacks a nucleus. Returns cells with the nuclei's ids and dtype.
    """
    nuclei = _as_label_image(nuclei)
    channel = np.asarray(channel, dtype=np.float64)
    if channel.shape != nuclei.shape:
        raise ValueError(f"channel shape {channel.shape} differs from nuclei {nuclei.shape}")
    if stain not in ("cytoplasm", "membrane"):
        raise ValueError(f"stain must be 'cytoplasm' or 'membrane', got {stain!r}")
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    is_nucleus = nuclei > 0
    if not is_nucleus.any():
        return np.zeros_like(nuclei)

    if threshold is None:
        threshold = float(threshold_otsu(channel)) if np.ptp(channel) > 0 else np.inf
    stained = channel > threshold
    if stain == "membrane":  # outlines and what they enclose: the dim areas holding a nucleus
        dim_areas, _ = ndi.label(~stained)
        holding_nucleus = np.unique(dim_areas[is_nucleus])
        stained |= np.isin(dim_areas, holding_nucleus[holding_nucleus > 0])
    near_nucleus = ndi.distance_transform_edt(~is_nucleus) <= max_distance
    mask = (stained | is_nucleus) & near_nucleus

    smoothed = gaussian(channel, sigma=smoothing_sigma) if smoothing_sigma > 0 else channel
    elevation = -smoothed if stain == "cytoplasm" else smoothed
    cells = watershed(elevation, markers=nuclei, mask=mask)
    cells[is_nucleus] = nuclei[is_nucleus]
    return cells.astype(nuclei.dtype, copy=False)

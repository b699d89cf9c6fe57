"""Per-object intensities of named channels: mean, median and integrated (sum).

Columns are ``{prefix}{channel}_{statistic}`` with channel names made safe lowercase
identifiers ("Alexa 488" -> ``alexa_488``). `compartment_measurements` reports the nucleus,
the whole cell and the cytoplasm (cell minus its nucleus), all keyed by the nucleus id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

STATISTICS = ("mean", "median", "integrated")
COMPARTMENTS = ("nucleus", "cell", "cytoplasm")


def channel_column_names(names: Sequence[str | None] | None, count: int | None = None
                         ) -> list[str]:
    """Safe, unique, lowercase column names for channels (``ch0``, ``ch1``… when unnamed).

    Runs of characters other than letters and digits become one underscore; a name starting
    with a digit gets ``ch_`` in front ("488 nm" -> ``ch_488_nm``); repeats get ``_2``, ``_3``….
    """
    if names is None:
        if count is None:
            raise ValueError("give channel names or a channel count")
        names = [None] * count
    elif count is not None and len(names) != count:
        raise ValueError(f"{len(names)} channel names for {count} channels")
    columns: list[str] = []
    taken: set[str] = set()
    for index, name in enumerate(names):
        base = re.sub(r"[^0-9a-z]+", "_", str(name or "").lower()).strip("_")
        if not base:
            base = f"ch{index}"
        elif base[0].isdigit():
            base = f"ch_{base}"
        column, repeat = base, 1
        while column in taken:
            repeat += 1
            column = f"{base}_{repeat}"
        taken.add(column)
        columns.append(column)
    return columns


def _channel_list(channels, shape: tuple[int, ...]) -> list[np.ndarray]:
    """H x W x C array, one H x W array, or a list of H x W arrays -> list of float64 planes."""
    if isinstance(channels, np.ndarray):
        if channels.shape == shape:
            planes = [channels]
        elif channels.ndim == len(shape) + 1 and channels.shape[:-1] == shape:
            planes = [channels[..., c] for c in range(channels.shape[-1])]
        else:
            raise ValueError(f"channels shape {channels.shape} does not fit labels {shape} "
                             "(expected H x W x C)")
    else:
        planes = [np.asarray(plane) for plane in channels]
        for plane in planes:
            if plane.shape != shape:
                raise ValueError(f"channel shape {plane.shape} differs from labels {shape}")
    return [np.asarray(plane, dtype=np.float64) for plane in planes]


def _label_ids(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    return ids[ids > 0]


def _statistics(labels: np.ndarray, planes: list[np.ndarray], columns: list[str],
                ids: np.ndarray, prefix: str, with_pixels: bool = False) -> dict[int, dict]:
    """Mean, median and sum of each plane per id; NaN means and medians, 0 sums where absent."""
    values, inverse = np.unique(labels, return_inverse=True)
    slot = np.searchsorted(values, ids)  # ids absent from labels get a count of 0 below
    found_here = (slot < len(values)) & (values[np.minimum(slot, len(values) - 1)] == ids)
    counts = np.bincount(inverse.ravel(), minlength=len(values))
    pixels = np.where(found_here, counts[np.minimum(slot, len(values) - 1)], 0)
    present = pixels > 0
    results: dict[int, dict] = {int(i): {} for i in ids}
    if with_pixels:
        for i, count in zip(ids, pixels):
            results[int(i)][f"{prefix}pixels"] = int(count)
    for plane, column in zip(planes, columns):
        sums = np.zeros(len(ids))
        means = np.full(len(ids), np.nan)
        medians = np.full(len(ids), np.nan)
        if present.any():
            sums[present] = np.bincount(inverse.ravel(), weights=plane.ravel(),
                                        minlength=len(values))[slot[present]]
            means[present] = sums[present] / pixels[present]
            medians[present] = ndi.median(plane, labels, index=ids[present])
        for i, mean, median, total in zip(ids, means, medians, sums):
            row = results[int(i)]
            row[f"{prefix}{column}_mean"] = float(mean)
            row[f"{prefix}{column}_median"] = float(median)
            row[f"{prefix}{column}_integrated"] = float(total)
    return results


def channel_measurements(labels: np.ndarray, channels, names: Sequence[str | None] | None = None,
                         prefix: str = "") -> dict[int, dict]:
    """Per label id: ``{prefix}{name}_mean``, ``_median`` and ``_integrated`` of every channel.

    `channels` is an H x W x C array, one H x W array or a list of H x W arrays; `names` one
    per channel (None or missing: ``ch0``, ``ch1``…). One pass over each channel for all
    labels (scipy.ndimage with ``index=ids``). Empty labels give ``{}``.
    """
    labels = np.asarray(labels)
    planes = _channel_list(channels, labels.shape)
    columns = channel_column_names(names, len(planes))
    ids = _label_ids(labels)
    if ids.size == 0:
        return {}
    return _statistics(labels, planes, columns, ids, prefix)


def compartment_measurements(nuclei: np.ndarray, cells: np.ndarray, channels,
                             names: Sequence[str | None] | None = None) -> dict[int, dict]:
    """Per nucleus id: ``nucleus_``, ``cell_`` and ``cytoplasm_`` intensity columns.

    Cell ``i`` is the cell of nucleus ``i`` (as `cells_from_channel` and `expand_nuclei` give);
    its cytoplasm is the cell's pixels outside nucleus ``i``. Also ``{compartment}_pixels``.
    A compartment without pixels (a cell that is all nucleus, a nucleus without a cell) gets
    NaN means and medians and 0 integrated. Empty nuclei give ``{}``.
    """
    nuclei, cells = np.asarray(nuclei), np.asarray(cells)
    if cells.shape != nuclei.shape:
        raise ValueError(f"cells shape {cells.shape} differs from nuclei {nuclei.shape}")
    planes = _channel_list(channels, nuclei.shape)
    columns = channel_column_names(names, len(planes))
    ids = _label_ids(nuclei)
    if ids.size == 0:
        return {}
    cytoplasm = np.where(cells == nuclei, 0, cells)
    results: dict[int, dict] = {int(i): {} for i in ids}
    for compartment, labels in zip(COMPARTMENTS, (nuclei, cells, cytoplasm)):
        measured = _statistics(labels, planes, columns, ids, f"{compartment}_", with_pixels=True)
        for i in ids:
            results[int(i)].update(measured[int(i)])
    return results

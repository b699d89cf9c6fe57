"""3-D nuclei from 2-D segmentations of z-planes: stitching by overlap, and 3-D measurements.

`stitch_planes` links each plane's labels to the previous plane's by in-plane overlap
(Cellpose's ``stitch_threshold`` idea), so a 2-D model segments a z-stack plane by plane.

Limits:

- Anisotropic stacks (z steps larger than the pixel size) are handled: only the in-plane
  overlap of consecutive planes is used, never distances along z.
- Nuclei touching along z (one above the other) with similar footprints merge into one.
- Very sparse z sampling (a nucleus spanning fewer than 2 planes, or shifting by more than
  its own width between planes) gives one object per plane instead of one per nucleus.
- A nucleus missed in one plane is split in two: only consecutive planes are linked.
- A nucleus's tip (a few pixels in its first or last plane) overlaps the next plane's much
  larger section with a small IoU and becomes its own object: drop small 2-D objects first
  (a minimum size per plane) or small 3-D objects afterwards.
- True 3-D models (StarDist 3D, Cellpose 3D) do better on dense, near-isotropic stacks.
"""

from __future__ import annotations

import numpy as np


def _link_planes(previous: np.ndarray, current: np.ndarray, min_iou: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Current plane's ids, their inverse index, and the previous id each links to (0: none).

    One-to-one, greedy by IoU: the pair of highest IoU links first, then the next pair whose
    labels are both still free, down to `min_iou`. Overlaps are counted with np.unique on
    paired ids, never per label.
    """
    current_ids, current_index = np.unique(current, return_inverse=True)
    current_index = current_index.reshape(current.shape)
    links = np.zeros(len(current_ids), dtype=np.int64)
    both = (previous > 0) & (current > 0)
    if not both.any():
        return current_ids, current_index, links
    previous_ids, previous_areas = np.unique(previous, return_counts=True)
    current_areas = np.bincount(current_index.ravel(), minlength=len(current_ids))
    width = np.int64(len(current_ids))
    pairs, overlaps = np.unique(previous[both].astype(np.int64) * width + current_index[both],
                                return_counts=True)
    pair_previous, pair_current = pairs // width, pairs % width
    previous_area = previous_areas[np.searchsorted(previous_ids, pair_previous)]
    iou = overlaps / (previous_area + current_areas[pair_current] - overlaps)
    candidates = np.flatnonzero(iou >= min_iou)
    candidates = candidates[np.argsort(-iou[candidates], kind="stable")]
    used_previous: set[int] = set()
    for pair in candidates:  # one step per overlapping pair of labels, not per pixel
        before, after = int(pair_previous[pair]), int(pair_current[pair])
        if links[after] == 0 and before not in used_previous:
            links[after] = before
            used_previous.add(before)
    return current_ids, current_index, links


def stitch_planes(plane_labels: np.ndarray, min_iou: float = 0.25) -> np.ndarray:
    """One 3-D label image (Z x H x W, ids 1..N) from per-plane 2-D labels.

    Each label of plane z+1 takes the id of the plane-z label it overlaps best, if their IoU
    is at least `min_iou` and that label is not already taken (one-to-one, greedy by IoU);
    unmatched labels start new ids. Ids in the input need not agree between planes, nor be
    consecutive. Returns int32 (int64 beyond 2**31 - 1 nuclei).
    """
    plane_labels = np.asarray(plane_labels)
    if plane_labels.ndim != 3:
        raise ValueError(f"plane_labels must be Z x H x W, got shape {plane_labels.shape}")
    if not np.issubdtype(plane_labels.dtype, np.integer):
        raise ValueError(f"plane_labels must be integer labels, got dtype {plane_labels.dtype}")
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    stitched = np.zeros(plane_labels.shape, dtype=np.int64)
    last_id = 0
    previous = np.zeros(plane_labels.shape[1:], dtype=np.int64)
    for z, plane in enumerate(plane_labels):
        ids, index, links = _link_planes(previous, plane, min_iou)
        new = (ids > 0) & (links == 0)
        links[new] = last_id + 1 + np.arange(np.count_nonzero(new))
        last_id += int(np.count_nonzero(new))
        stitched[z] = links[index]
        previous = stitched[z]
    if last_id <= np.iinfo(np.int32).max:
        return stitched.astype(np.int32)
    return stitched


def measure_3d(labels3d: np.ndarray, spacing: tuple[float, float, float] | None = None
               ) -> list[dict]:
    """Per nucleus (ascending id): size, z range and centroid of a Z x H x W label image.

    Keys: label, voxels, z_min, z_max, z_extent (planes spanned), centroid_z/_y/_x (voxels);
    with `spacing` (z, y, x; e.g. µm) also volume_um3, z_extent_um and centroid_*_um.
    """
    labels3d = np.asarray(labels3d)
    if labels3d.ndim != 3:
        raise ValueError(f"labels3d must be Z x H x W, got shape {labels3d.shape}")
    if spacing is not None and len(spacing) != 3:
        raise ValueError(f"spacing must be (z, y, x), got {spacing}")
    coordinates = np.nonzero(labels3d)  # C order: z ascending
    values = labels3d[coordinates]
    if values.size == 0:
        return []
    ids, first, index, voxels = np.unique(values, return_index=True, return_inverse=True,
                                          return_counts=True)
    _, last_from_end = np.unique(values[::-1], return_index=True)
    z = coordinates[0]
    z_min, z_max = z[first], z[len(values) - 1 - last_from_end]
    centroids = [np.bincount(index, weights=axis, minlength=len(ids)) / voxels
                 for axis in coordinates]
    rows = []
    for n, label in enumerate(ids):
        row = {"label": int(label), "voxels": int(voxels[n]), "z_min": int(z_min[n]),
               "z_max": int(z_max[n]), "z_extent": int(z_max[n] - z_min[n] + 1)}
        for axis, centroid in zip("zyx", centroids):
            row[f"centroid_{axis}"] = float(centroid[n])
        if spacing is not None:
            row["volume_um3"] = float(voxels[n] * np.prod(spacing, dtype=np.float64))
            row["z_extent_um"] = float(row["z_extent"] * spacing[0])
            for axis, step in zip("zyx", spacing):
                row[f"centroid_{axis}_um"] = row[f"centroid_{axis}"] * float(step)
        rows.append(row)
    return rows

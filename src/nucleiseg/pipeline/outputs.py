"""A run's files: where one image's outputs go, what is refused before anything is written,
the rows of summary.csv and of an earlier run's (--resume), and the cleanup after a killed
writer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.scale import CHECK_COLUMNS
from nucleiseg.errors import UsageError
from nucleiseg.io.microscopy import format_pixel_size
from nucleiseg.io.outlines import export_paths
from nucleiseg.io.wholeslide import is_zarr_image, zarr_labels_path


@dataclasses.dataclass(frozen=True)
class PredictionResult:
    image: Path
    nuclei: int = 0
    mean_area: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False  # outputs were already there (--resume)
    planes: int = 1  # 2-D planes segmented (a z-stack or time series with --planes each)
    pixel_size_um: tuple[float, float] | None = None  # (y, x), when known
    check: dict | None = None  # ImageCheck.row(): diameter, scale, confidence, warning


RUN_OUTPUTS = ("measurements.csv", "summary.csv")


SUMMARY_COLUMNS = ("image", "nuclei", "mean_area", "seconds", "error", "planes", "pixel_size_um",
                   *CHECK_COLUMNS)


def output_stem(image_path: Path) -> str:
    """The file name without its type: 'a' for a.png, a.tif and a.ome.tif."""
    name = Path(image_path).name
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(image_path).stem


def output_paths(image_path: Path, out_dir: Path, exports=(), cells: bool = False
                 ) -> dict[str, Path]:
    """{kind: path} of one image's outputs; `exports` adds "geojson" and "imagej-rois"
    (nucleiseg.io.outlines: <stem>.geojson, <stem>_rois.zip), `cells` "cells"
    (<stem>_cells.tif, predict --cells)."""
    if cells:
        return {**output_paths(image_path, out_dir, exports),
                "cells": out_dir / f"{output_stem(image_path).removesuffix('.ome')}_cells.tif"}
    stem = output_stem(image_path)
    if is_zarr_image(image_path):  # OME-Zarr: labels/nuclei inside it, beside the image
        stem = stem.removesuffix(".ome")
        return {"labels": zarr_labels_path(image_path), "mask": out_dir / f"{stem}_mask.png",
                "overlay": out_dir / f"{stem}_overlay.png",
                **export_paths(stem, out_dir, exports)}
    return {"labels": out_dir / f"{stem}_labels.tif", "mask": out_dir / f"{stem}_mask.png",
            "overlay": out_dir / f"{stem}_overlay.png", **export_paths(stem, out_dir, exports)}


def plan_outputs(images, out_dir: Path, overwrite: bool, resume: bool, exports=(),
                 cells: bool = False) -> None:
    """Refuse inputs that would write the same outputs, and existing outputs unless
    --overwrite (replace them) or --resume (keep complete ones) says what to do."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    stems: dict[str, Path] = {}
    for path in images:
        stem = output_stem(path)
        if stem in stems:
            raise UsageError(f"two inputs would write the same outputs: {stems[stem]} and "
                             f"{path} (both named {stem!r})")
        stems[stem] = path
    if not overwrite and not resume:
        planned = [p for image in images
                   for p in output_paths(image, out_dir, exports, cells).values()]
        existing = [p for p in planned + [out_dir / name for name in RUN_OUTPUTS] if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]}: output exists ({len(existing)} in all); pass "
                             "--resume to keep complete outputs and do the rest, or "
                             "--overwrite to replace them")


def previous_rows(out_dir: Path) -> dict[str, dict]:
    """Per-image rows (time, scale, checks) of an earlier run's summary.csv (for --resume),
    if there is one."""
    import csv

    try:
        with open(out_dir / "summary.csv", newline="", encoding="utf-8",
                  errors="backslashreplace") as handle:
            return {row["image"]: row for row in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error):
        return {}


def earlier_figures(earlier: dict, path: Path) -> tuple[float, dict]:
    """(seconds, check row) of `path` in an earlier run's summary rows (previous_rows), for an
    image --resume keeps; 0 and empty checks when the earlier run did not list it."""
    row = earlier.get(display_name(path), {})
    return float(row.get("seconds") or 0.0), {key: row.get(key, "") for key in CHECK_COLUMNS}


def remove_partials(out_dir: Path, jobs) -> None:
    """Remove what a killed writer left: the hidden temporary files (io.runfiles.atomic_write:
    `.<name>.XXXXXXXX<suffix>`) of this run's outputs. Called while the run holds the lock on
    `out_dir` and all its images are done, so no writer is left to own them."""
    import os
    import re

    names = {(p.stem, p.suffix) for job in jobs for p in map(Path, job.paths.values())
             if p.parent == out_dir}
    pattern = re.compile(r"\.(.+)\.[a-z0-9_]{8}(\.[^.]+)$")
    with os.scandir(out_dir) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name) if entry.name.startswith(".") else None
            if match and match.groups() in names and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)


def summary_row(name: str, result: PredictionResult) -> dict:
    return {"image": name, "nuclei": result.nuclei, "mean_area": round(result.mean_area, 2),
            "seconds": round(result.seconds, 3), "error": result.error or "",
            "planes": "" if result.error else result.planes,
            "pixel_size_um": format_pixel_size(result.pixel_size_um), **(result.check or {})}


def display_name(item) -> str:
    """A file name or message printable on any terminal (non-UTF-8 bytes escaped)."""
    text = item.name if isinstance(item, Path) else str(item)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def label_image_dtype(count: int):
    """uint16 (what most viewers expect) unless more nuclei than it can number."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def mean_area(rows) -> float:
    return float(np.mean([row["area"] for row in rows])) if rows else 0.0

"""Exploratory statistics of a labelled data set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.preprocess import image_kind, normalize_image
from nucleiseg.io.images import find_samples, load_samples


def describe(data_dir: Path, skip_bad: bool = False, channel: int | str | None = None):
    """Return (statistics dict, loaded samples); `channel`: the nuclear channel of
    multi-channel images."""
    samples, skipped = find_samples(data_dir, skip_bad=skip_bad)
    loaded, unreadable = load_samples(samples, skip_bad=skip_bad, channel=channel)
    counts = np.array([int(len(np.unique(labels)) - (labels.min() == 0))
                       for _, _, labels in loaded])
    areas = np.concatenate([np.bincount(labels.ravel())[1:] for _, _, labels in loaded])
    areas = areas[areas > 0]
    stats = {
        "data": str(data_dir),
        "layout": samples[0].layout,
        "images": len(loaded),
        "skipped": [f"{name}: {why}" for name, why in skipped + unreadable],
        "sizes": Counter(f"{im.shape[1]}x{im.shape[0]}" for _, im, _ in loaded).most_common(),
        "kinds": Counter(image_kind(im) for _, im, _ in loaded).most_common(),
        "pixel_types": Counter(f"{im.dtype}, {im.shape[-1]} channel(s)"
                               for _, im, _ in loaded).most_common(),
        "nuclei": int(counts.sum()),
        "nuclei_per_image": {"min": int(counts.min()), "median": float(np.median(counts)),
                             "mean": float(counts.mean()), "max": int(counts.max())},
        "nucleus_area_px": {"median": float(np.median(areas)) if areas.size else 0.0,
                            "p5": float(np.percentile(areas, 5)) if areas.size else 0.0,
                            "p95": float(np.percentile(areas, 95)) if areas.size else 0.0},
        "foreground_fraction": float(sum(np.count_nonzero(lab) for _, _, lab in loaded)
                                     / sum(lab.size for _, _, lab in loaded)),
    }
    return stats, loaded


def format_description(stats: dict) -> str:
    def counter(items):
        return ", ".join(f"{key} ({n})" for key, n in items)

    per = stats["nuclei_per_image"]
    area = stats["nucleus_area_px"]
    lines = [
        f"data:         {stats['data']} ({stats['layout']} layout)",
        f"images:       {stats['images']}" + (f" ({len(stats['skipped'])} skipped)"
                                              if stats["skipped"] else ""),
        f"kinds:        {counter(stats['kinds'])}",
        f"sizes (WxH):  {counter(stats['sizes'][:8])}"
        + (" ..." if len(stats["sizes"]) > 8 else ""),
        f"pixel types:  {counter(stats['pixel_types'])}",
        f"nuclei:       {stats['nuclei']} (per image: min {per['min']}, median {per['median']:g}, "
        f"mean {per['mean']:.1f}, max {per['max']})",
        f"nucleus area: median {area['median']:g} px (5-95%: {area['p5']:g}-{area['p95']:g})",
        f"foreground:   {stats['foreground_fraction']:.1%} of pixels "
        f"(an all-background prediction scores {1 - stats['foreground_fraction']:.1%} "
        "pixel accuracy)",
    ]
    lines += [f"skipped:      {line}" for line in stats["skipped"]]
    return "\n".join(lines)


def sample_figure(loaded, path: Path, count: int = 8, seed: int = 0) -> None:
    """A grid of `count` evenly chosen images over their labelled nuclei."""
    from nucleiseg.render import sample_grid

    count = max(1, min(count, len(loaded)))
    chosen = np.linspace(0, len(loaded) - 1, count).round().astype(int)
    picked = [loaded[i] for i in chosen]
    sample_grid([normalize_image(im) for _, im, _ in picked], [lab for _, _, lab in picked], path,
                names=[s.name for s, _, _ in picked], kinds=[image_kind(im) for _, im, _ in picked])

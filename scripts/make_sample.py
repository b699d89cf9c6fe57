"""Build the bundled sample (src/nucleiseg/sample_data) from the DSB 2018 stage-1 data.

    python scripts/make_sample.py ../shared/data/dsb2018-stage1-train

Picks 28 fluorescence, 8 histology and 4 bright-field images (seeded), crops each to at most
256 x 256 at native resolution (the window with the most nucleus pixels of a few), and writes
two folders in the paired layout, train/ and a separate test/ (the last pick of each kind:
6 + 2 + 1 images): images/<kind>_<id8>.png and masks/<kind>_<id8>.png (16-bit label images).
"""

import sys
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.preprocess import image_kind, to_rgb
from nucleiseg.io.images import find_samples, load_sample, write_png

COUNTS = {"fluorescence": 28, "histology": 8, "brightfield": 4}
TEST_COUNTS = {"fluorescence": 6, "histology": 2, "brightfield": 1}
CROP = 256


def best_crop(labels: np.ndarray, rng) -> tuple[slice, slice]:
    height, width = labels.shape
    best, best_score = None, -1
    for _ in range(8):
        top = int(rng.integers(0, height - min(CROP, height) + 1))
        left = int(rng.integers(0, width - min(CROP, width) + 1))
        window = (slice(top, top + CROP), slice(left, left + CROP))
        score = np.count_nonzero(labels[window])
        if score > best_score:
            best, best_score = window, score
    return best


def main(source: str, out: str = "src/nucleiseg/sample_data") -> None:
    rng = np.random.default_rng(2018)
    samples, _ = find_samples(Path(source))
    by_kind: dict[str, list] = {kind: [] for kind in COUNTS}
    for sample in samples:
        image, labels = load_sample(sample)
        by_kind[image_kind(image)].append(sample)
    out = Path(out)
    for part in ("train", "test"):
        for folder in ("images", "masks"):
            (out / part / folder).mkdir(parents=True, exist_ok=True)
    lines = []
    for kind, count in COUNTS.items():
        chosen = rng.choice(len(by_kind[kind]), size=count, replace=False)
        for rank, index in enumerate(sorted(chosen)):
            part = "test" if rank >= count - TEST_COUNTS[kind] else "train"
            sample = by_kind[kind][index]
            image, labels = load_sample(sample)
            window = best_crop(labels, rng)
            image, labels = to_rgb(image)[window], labels[window]
            if kind != "histology":
                image = image[..., 0]  # grey stored as grey: smaller files
            _, labels = np.unique(labels, return_inverse=True)  # renumber 1..N
            name = f"{kind}_{sample.name[:8]}"
            write_png(out / part / "images" / f"{name}.png", image)
            write_png(out / part / "masks" / f"{name}.png",
                      labels.reshape(image.shape[:2]).astype(np.uint16))
            lines.append(f"| {part}/{name} | {sample.name} | "
                         f"rows {window[0].start}-{window[0].stop}, "
                         f"cols {window[1].start}-{window[1].stop} |")
    (out / "SOURCES.md").write_text(
        "# Bundled sample\n\n40 crops (at most 256x256, native resolution) of images from the 2018 "
        "Data Science Bowl stage 1 training set (BBBC038, Broad Bioimage Benchmark Collection), "
        "in the community-corrected version. Licence: CC0 1.0 (public domain).\n\n"
        "`train/` (31 images) is what `nucleiseg train` uses when no --data is given; `test/` "
        "(9 images) is a separate labelled set for `nucleiseg evaluate`.\n"
        "Masks are 16-bit label images (0 = background, 1..N = nuclei).\n"
        "Made by `python scripts/make_sample.py ../shared/data/dsb2018-stage1-train`.\n\n"
        "| file | source image id | crop |\n|---|---|---|\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""python -m benchmarks.make_slide OUT.tif [--size 24000] [--shrink 1] [--data DSB_FOLDER]
                                  [--seed 0]

Writes a size x size RGB whole-slide TIFF like a user's scanned H&E slide: tiled (512² tiles,
zlib), pyramidal (levels halving down to about 1,000 px, as SubIFDs), a mosaic of the DSB
data set's colour (histology) images, each 256² cell a crop of one of them, flipped or turned
(--shrink 2: each crop averaged down to 128², nuclei half as large, as a slide scanned at half
the magnification, which `predict --diameter auto` upscales).
It is written tile by tile (the whole slide is never in memory). Without the DSB data, the
cells are synthetic H&E-like disks (benchmarks.common.slide_pixels) and it says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, slide_pixels

TILE = 512  # TIFF tile side
CELL = 256  # mosaic cell side: the smallest DSB images, so a cell is a plain crop


def histology_images(data_dir: Path) -> list[np.ndarray]:
    """The DSB colour (H&E-like) images (at least CELL² each) as RGB uint8."""
    from nucleiseg.algorithms.preprocess import image_kind
    from nucleiseg.io.images import find_samples, read_image

    samples, _ = find_samples(data_dir, skip_bad=True)
    out = []
    for sample in samples:
        image = read_image(sample.image_path)[..., :3]
        if (image.shape[-1] == 3 and min(image.shape[:2]) >= CELL
                and image_kind(image) == "histology"):
            out.append(image.astype(np.uint8))
    return out


class Mosaic:
    """Pixels of an endless mosaic: cell (i, j) (CELL² at level 0) is a crop of one source
    image, chosen with its crop, flip and turn from a hash of (i, j), so any pixel can be
    computed on its own and a pyramid level is the mosaic sampled every 2nd, 4th... pixel."""

    def __init__(self, images: list[np.ndarray], seed: int = 0, shrink: int = 1):
        self.images, self.seed, self.shrink = images, seed, shrink
        self.side = CELL // shrink

    def cell(self, i: int, j: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i, j])
        image = self.images[rng.integers(len(self.images))]
        top = rng.integers(image.shape[0] - CELL + 1)
        left = rng.integers(image.shape[1] - CELL + 1)
        crop = image[top:top + CELL, left:left + CELL]
        if rng.integers(2):
            crop = crop[:, ::-1]
        if self.shrink > 1:  # the mean of each shrink x shrink square
            side, k = self.side, self.shrink
            crop = crop.reshape(side, k, side, k, 3).mean((1, 3)).round().astype(np.uint8)
        return np.rot90(crop, rng.integers(4))

    def pixels(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        out = np.empty((len(ys), len(xs), 3), np.uint8)
        side = self.side
        for i in np.unique(ys // side):
            rows = np.flatnonzero(ys // side == i)
            for j in np.unique(xs // side):
                cols = np.flatnonzero(xs // side == j)
                cell = self.cell(int(i), int(j))
                out[np.ix_(rows, cols)] = cell[np.ix_(ys[rows] % side, xs[cols] % side)]
        return out


def write_slide(path: Path, size: int, pixels, tile: int = TILE) -> Path:
    """A size x size RGB tiled (zlib) pyramidal TIFF of `pixels(ys, xs)`, tile by tile."""
    import tifffile

    steps = [1]
    while size // (steps[-1] * 2) >= 1000:
        steps.append(steps[-1] * 2)

    def tiles(step):
        length = -(-size // step)
        for top in range(0, length, tile):
            ys = np.arange(top, min(top + tile, length)) * step
            for left in range(0, length, tile):
                yield pixels(ys, np.arange(left, min(left + tile, length)) * step)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        for index, step in enumerate(steps):
            length = -(-size // step)
            extra = {"subifds": len(steps) - 1} if index == 0 else {"subfiletype": 1}
            tif.write(tiles(step), shape=(length, length, 3), dtype=np.uint8,
                      tile=(tile, tile), photometric="rgb", compression="zlib", **extra)
    partial.replace(path)
    return path


def make_slide(path: Path, size: int, data_dir: Path | None = DEFAULT_DATA,
               seed: int = 0, shrink: int = 1) -> str:
    """Write the slide; returns what its cells are made of."""
    images = (histology_images(data_dir) if data_dir is not None and Path(data_dir).is_dir()
              else [])
    if images:
        write_slide(path, size, Mosaic(images, seed, shrink).pixels)
        return (f"a mosaic of {len(images)} DSB histology images"
                + (f", shrunk {shrink}x" if shrink > 1 else ""))
    write_slide(path, size, lambda ys, xs: slide_pixels(ys, xs, seed))
    return "synthetic H&E-like disks (the DSB data set was not found)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.make_slide", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=24000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shrink", type=int, choices=(1, 2, 4), default=1,
                        help="images shrunk this much (nuclei smaller, as at a lower "
                             "magnification)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    made_of = make_slide(args.out, args.size, args.data, args.seed, args.shrink)
    print(f"{args.out}: {args.size}² RGB, {made_of}; {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared pieces: where the data is, timing, peak memory of a child process, synthetic images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                / "dsb2018-stage1-train")


class Stopwatch:
    """Accumulates named durations: `with watch("read"): ...`; from any thread (overlapped
    stages add up to more than the time they took together)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str):
        watch = self

        class _Lap:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
                with watch.lock:
                    watch.seconds[name] = watch.seconds.get(name, 0.0) + elapsed

        return _Lap()

    def wrap(self, name: str, function):
        """`function` that adds its run time to `name`."""
        def timed(*args, **kwargs):
            with self(name):
                return function(*args, **kwargs)

        return timed


def run_child(module_args: list[str]) -> tuple[dict, float]:
    """Run `python -m benchmarks.<...>` in a fresh process; returns (the JSON it prints last,
    its peak resident memory in MB from the kernel's accounting)."""
    process = subprocess.Popen([sys.executable, "-m", *module_args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(process.pid, 0)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(module_args)} failed ({process.returncode}):\n"
                           f"{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def synthetic_image(size: int, data_dir: Path | None = None, seed: int = 0) -> np.ndarray:
    """A size x size grey uint8 image full of nuclei: a mosaic of DSB fluorescence images when
    the data set is there, else random blurred disks."""
    rng = np.random.default_rng(seed)
    if data_dir is not None and Path(data_dir).is_dir():
        from nucleiseg.algorithms.preprocess import image_kind
        from nucleiseg.io.images import find_samples, read_image

        samples, _ = find_samples(data_dir, skip_bad=True)
        tiles = []
        for sample in samples[:120]:
            image = read_image(sample.image_path)
            if image_kind(image) == "fluorescence":
                tiles.append(image[..., 0])
        out = np.zeros((size, size), np.uint8)
        top = 0
        while top < size:
            left, row_height = 0, 0
            while left < size:
                tile = tiles[rng.integers(len(tiles))]
                h, w = min(tile.shape[0], size - top), min(tile.shape[1], size - left)
                out[top:top + h, left:left + w] = tile[:h, :w]
                left, row_height = left + w, max(row_height, h)
            top += row_height
        return out
    from scipy import ndimage

    out = np.zeros((size, size), np.float32)
    count = size * size // 900
    ys, xs = rng.integers(0, size, count), rng.integers(0, size, count)
    out[ys, xs] = 1.0
    out = ndimage.grey_dilation(out, size=(9, 9))
    out = ndimage.gaussian_filter(out, 1.5)
    out += rng.normal(0, 0.03, out.shape).astype(np.float32)
    return np.clip(out * 200 + 10, 0, 255).astype(np.uint8)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def slide_pixels(ys: np.ndarray, xs: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB uint8 pixels (len(ys), len(xs), 3) of an endless synthetic H&E-like slide: purple
    nuclei (radius 6-11 px, one in 3 of 4 cells of a 32 px grid, jittered) on pink tissue, with
    noise. Any pixel can be computed on its own, so a huge slide is made band by band and
    its pyramid levels are the same slide sampled every 2nd, 4th... pixel."""
    def mix(values):  # a 64-bit integer hash, elementwise
        values = (values ^ (values >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        values = (values ^ (values >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
        return values ^ (values >> np.uint64(33))

    y = ys.astype(np.uint64)[:, None]
    x = xs.astype(np.uint64)[None, :]
    cell = mix((y // np.uint64(32)) * np.uint64(1 << 20) + x // np.uint64(32)
               + np.uint64(seed) * np.uint64(1 << 42))
    dy = ((cell & np.uint64(7)).astype(np.int16) - 4) + 16 - (y % np.uint64(32)).astype(np.int16)
    dx = (((cell >> np.uint64(3)) & np.uint64(7)).astype(np.int16) - 4) + 16 - \
        (x % np.uint64(32)).astype(np.int16)
    radius = 6 + ((cell >> np.uint64(6)) % np.uint64(6)).astype(np.int16)
    present = ((cell >> np.uint64(9)) & np.uint64(3)) != 0
    inside = present & (dy.astype(np.int32) ** 2 + dx.astype(np.int32) ** 2 <= radius**2)
    noise = (mix(y * np.uint64(1 << 32) + x + np.uint64(seed)) & np.uint64(15)).astype(np.int16)
    out = np.empty((len(ys), len(xs), 3), np.uint8)
    for channel, (tissue, nucleus) in enumerate(((232, 95), (196, 62), (214, 150))):
        out[..., channel] = np.where(inside, nucleus, tissue) + noise - 8
    return out


def synthetic_slide(path: Path, size: int, tile: int = 256, seed: int = 0) -> Path:
    """A size x size RGB tiled pyramidal BigTIFF of slide_pixels (JPEG tiles when imagecodecs
    is installed, else zlib; levels halve down to <= 2048 px), written tile row by tile row,
    so making it takes little memory. Kept: an existing file of that name is reused."""
    import tifffile

    path = Path(path)
    if path.exists():
        return path
    try:
        import imagecodecs  # noqa: F401

        compression = "jpeg"
    except ImportError:
        compression = "zlib"
    levels = []
    while size // 2 ** (len(levels) + 1) >= 1024:
        levels.append(2 ** (len(levels) + 1))

    def tiles(step):
        length = -(-size // step)
        xs = np.arange(length) * step
        for top in range(0, length, tile):
            band = slide_pixels(np.arange(top, min(top + tile, length)) * step, xs, seed)
            for left in range(0, length, tile):
                yield band[:, left:left + tile]

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        for index, step in enumerate([1, *levels]):
            length = -(-size // step)
            extra = {"subifds": len(levels)} if index == 0 else {"subfiletype": 1}
            tif.write(tiles(step), shape=(length, length, 3), dtype=np.uint8,
                      tile=(tile, tile), photometric="rgb", compression=compression, **extra)
    partial.replace(path)
    return path

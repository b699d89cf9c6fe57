"""Shared pieces: where the data is, timing, peak memory of a child process, synthetic images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                / "dsb2018-stage1-train")


class Stopwatch:
    """Accumulates named durations: `with watch("read"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        watch = self

        class _Lap:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
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
        from nucleiseg.io import find_samples, read_image
        from nucleiseg.preprocess import image_kind

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

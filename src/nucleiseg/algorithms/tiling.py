"""Tiled prediction at native resolution: a splitter (tile positions) and a blender.

Tiles overlap, and are fitted to the image: as few as the largest tile size allows, each as
short as covering the image then needs (a 520 px side is two tiles of 320, not two of 512
overlapping by 504); the last tile of a row or column sits flush with the image edge. Each tile's
class probabilities are weighted by a Gaussian that is highest at the tile centre and never
reaches zero (nnU-Net's choice), so seams vanish. Rows of tiles are blended into a rolling
accumulator one tile high: working memory grows with the tile size and the image width, not
with the image area.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from nucleiseg.config import SIZE_MULTIPLE


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with the fewest tiles of `tile` that overlap by at
    least `overlap`, spread evenly: the first starts at 0, the last ends exactly at `length`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / max(1, tile - overlap))
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_layout(length: int, tile: int = 512, overlap: int = 64) -> tuple[int, list[int]]:
    """(tile length, start offsets) along an axis of `length` pixels: one tile padded to a
    multiple of SIZE_MULTIPLE when that fits in `tile`; else the fewest tiles of at most
    `tile` that overlap by at least `overlap`, each shortened (in SIZE_MULTIPLE steps) as far
    as that allows, so that the model computes little beyond the image."""
    padded = round_up(length)
    if padded <= tile:
        return padded, [0]
    count = max(2, math.ceil((length - overlap) / max(1, tile - overlap)))
    size = min(tile, round_up(math.ceil((length + (count - 1) * overlap) / count)))
    return size, tile_starts(length, size, overlap)


def gaussian_weights(tile: int, sigma_fraction: float = 1 / 8, floor: float = 1e-3) -> np.ndarray:
    """(tile, tile) blending weights: a Gaussian of sigma tile/8, scaled to max 1, >= floor."""
    centre = (tile - 1) / 2
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / (tile * sigma_fraction)) ** 2)
    weights = np.outer(axis, axis)
    return np.maximum(weights / weights.max(), floor).astype(np.float32)


def round_up(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    return -(-value // multiple) * multiple


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mirror-pad an array's first two axes (an (H, W, C) image, an (H, W) target) at the
    bottom/right to at least height x width; the array itself when it is large enough. The one
    mirror-pad of tiles, training crops and calibration crops."""
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if pad_h or pad_w:
        pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, pads, mode="symmetric")
    return image


def predict_tiled(predict_batch, image: np.ndarray, num_classes: int, tile: int = 512,
                  overlap: int = 64, batch_size: int = 4, prepare=None,
                  dtype=np.float32) -> np.ndarray:
    """Class probabilities (H, W, num_classes) for an (H, W, C) image.

    `predict_batch(tiles)` maps (N, t, t, 3) float32 to (N, t, t, num_classes) probabilities.
    `prepare(crop)`, if given, turns each raw crop into a normalised float32 (t, t, 3) tile, so a
    large image is never normalised (copied as float32) whole. With dtype uint8 the result is
    quantised to 0..255 (a quarter of float32's memory). An image no larger than a tile is
    predicted whole (padded to a multiple of 32).
    """
    from nucleiseg.algorithms.instances import quantise_probabilities

    prepare = prepare or (lambda crop: crop)
    finish = quantise_probabilities if dtype == np.uint8 else (lambda p: p)
    height, width = image.shape[:2]
    tile_h, rows = tile_layout(height, tile, overlap)
    tile_w, cols = tile_layout(width, tile, overlap)
    padded = pad_image(image, max(height, tile_h), max(width, tile_w))
    full_h, full_w = padded.shape[:2]
    weight = gaussian_weights(max(tile_h, tile_w))
    top_w, left_w = (weight.shape[0] - tile_h) // 2, (weight.shape[1] - tile_w) // 2
    weight = weight[top_w:top_w + tile_h, left_w:left_w + tile_w, None]

    out = np.empty((full_h, full_w, num_classes), dtype)
    acc = np.zeros((tile_h, full_w, num_classes), np.float32)
    acc_weight = np.zeros((tile_h, full_w, 1), np.float32)
    batches = [(row, cols[start:start + batch_size]) for row in rows
               for start in range(0, len(cols), batch_size)]
    tiles = (np.stack([prepare(padded[row:row + tile_h, col:col + tile_w]) for col in chunk])
             for row, chunk in batches)
    top = 0
    for (row, chunk), predicted in zip(batches, predicted_ahead(predict_batch, tiles)):
        shift = row - top
        if shift:  # rows [top, row) receive no more tiles: finish them, roll the window down
            out[top:row] = finish(acc[:shift] / acc_weight[:shift])
            acc[:-shift], acc[-shift:] = acc[shift:], 0.0
            acc_weight[:-shift], acc_weight[-shift:] = acc_weight[shift:], 0.0
            top = row
        for col, probabilities in zip(chunk, predicted):
            acc[:, col:col + tile_w] += probabilities * weight
            acc_weight[:, col:col + tile_w] += weight
    out[top:] = finish(acc[:full_h - top] / acc_weight[:full_h - top])
    return out[:height, :width]


def predicted_ahead(predict_batch, batches):
    """predict_batch(batch) of each batch in turn, the model one batch ahead in a thread: while
    it predicts a batch, the next one is prepared and the caller blends the one before (numpy
    and the engines release the GIL). One batch alone is predicted here."""
    from concurrent.futures import ThreadPoolExecutor

    batches = iter(batches)
    first, second = next(batches, None), next(batches, None)
    if second is None:
        if first is not None:
            yield predict_batch(first)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="nucleiseg-model") as model_thread:
        pending = model_thread.submit(predict_batch, first)
        for batch in itertools.chain([second], batches):  # made while the model runs
            predicted = pending.result()
            pending = model_thread.submit(predict_batch, batch)
            yield predicted
        yield pending.result()


# The eight symmetries of the square, as (forward, inverse) pairs on (N, H, W, C) batches.
def _transpose(x):
    return np.swapaxes(x, 1, 2)


SYMMETRIES = [
    (lambda x: x, lambda x: x),
    (lambda x: x[:, :, ::-1], lambda x: x[:, :, ::-1]),
    (lambda x: x[:, ::-1], lambda x: x[:, ::-1]),
    (lambda x: x[:, ::-1, ::-1], lambda x: x[:, ::-1, ::-1]),
    (_transpose, _transpose),
    (lambda x: _transpose(x)[:, :, ::-1], lambda x: _transpose(x[:, :, ::-1])),
    (lambda x: _transpose(x)[:, ::-1], lambda x: _transpose(x[:, ::-1])),
    (lambda x: _transpose(x)[:, ::-1, ::-1], lambda x: _transpose(x[:, ::-1, ::-1])),
]


def with_test_time_augmentation(predict_batch, transforms: int = 8):
    """Wrap `predict_batch` to average its probabilities over flips (4) or flips and
    90-degree rotations (8). Non-square tiles use the 4 flips."""
    def predict(tiles):
        usable = SYMMETRIES[:transforms] if tiles.shape[1] == tiles.shape[2] else SYMMETRIES[:4]
        total = sum(inverse(predict_batch(np.ascontiguousarray(forward(tiles))))
                    for forward, inverse in usable)
        return total / len(usable)

    return predict

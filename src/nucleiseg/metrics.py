"""Pixel metrics on NumPy arrays: plain functions returning small typed results.

Foreground IoU and Dice are pooled: counts are summed over all images, then divided
(one large image weighs more than a small one), as the reference figures in README are.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of foreground (nucleus) pixels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "PixelCounts") -> "PixelCounts":
        return PixelCounts(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                   dataclasses.astuple(other))))

    @property
    def accuracy(self) -> float:
        total = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / total if total else 1.0

    @property
    def foreground_iou(self) -> float:
        """|P ∩ T| / |P ∪ T|; 1.0 when both are empty."""
        union = self.tp + self.fp + self.fn
        return self.tp / union if union else 1.0

    @property
    def dice(self) -> float:
        """2|P ∩ T| / (|P| + |T|); 1.0 when both are empty."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    def as_dict(self) -> dict:
        return {"pixel_accuracy": self.accuracy, "foreground_iou": self.foreground_iou,
                "dice": self.dice, **dataclasses.asdict(self)}


def pixel_counts(true_mask: np.ndarray, pred_mask: np.ndarray) -> PixelCounts:
    """Counts for one image; any non-zero value is foreground (labels or classes both work)."""
    true_mask, pred_mask = np.asarray(true_mask) != 0, np.asarray(pred_mask) != 0
    if true_mask.shape != pred_mask.shape:
        raise ValueError(f"shapes differ: true {true_mask.shape}, predicted {pred_mask.shape}")
    tp = int(np.count_nonzero(true_mask & pred_mask))
    fp = int(np.count_nonzero(pred_mask)) - tp
    fn = int(np.count_nonzero(true_mask)) - tp
    return PixelCounts(tp, fp, fn, true_mask.size - tp - fp - fn)


def pooled_counts(true_masks, pred_masks) -> PixelCounts:
    total = PixelCounts()
    for true_mask, pred_mask in zip(true_masks, pred_masks, strict=True):
        total = total + pixel_counts(true_mask, pred_mask)
    return total

"""Pixel metrics on NumPy arrays: plain functions returning small typed results.

Foreground IoU and Dice are pooled: counts are summed over all images, then divided
(one large image weighs more than a small one), as the reference figures in docs/results.md are.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

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



# ---------------------------------------------------------------- instance metrics

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95


def overlapping_pairs(true_labels: np.ndarray, pred_labels: np.ndarray):
    """IoU of every overlapping (true, predicted) pair of nuclei, as sparse triples.

    Returns (true_ids, pred_ids, pairs) where true_ids / pred_ids are the non-zero labels and
    `pairs` is a (K, 3) float array of rows (index into true_ids, index into pred_ids, IoU).
    Memory grows with the number of pixels and overlapping pairs, never with
    (true nuclei x predicted nuclei), so label images with 100,000 nuclei are fine.
    """
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"shapes differ: true {true_labels.shape}, predicted {pred_labels.shape}")
    if true_labels.size == 0:
        return np.zeros(0, true_labels.dtype), np.zeros(0, pred_labels.dtype), np.zeros((0, 3))
    true_ids, true_index = np.unique(true_labels, return_inverse=True)
    pred_ids, pred_index = np.unique(pred_labels, return_inverse=True)
    true_index, pred_index = true_index.ravel(), pred_index.ravel()
    true_area = np.bincount(true_index, minlength=len(true_ids))
    pred_area = np.bincount(pred_index, minlength=len(pred_ids))
    codes, intersection = np.unique(true_index.astype(np.int64) * len(pred_ids) + pred_index,
                                    return_counts=True)
    rows, cols = np.divmod(codes, len(pred_ids))
    # Drop background: index 0 is label 0 when present (np.unique sorts).
    true_zero, pred_zero = int(true_ids[0] == 0), int(pred_ids[0] == 0)
    keep = (rows >= true_zero) & (cols >= pred_zero)
    rows, cols, intersection = rows[keep], cols[keep], intersection[keep]
    union = true_area[rows] + pred_area[cols] - intersection
    pairs = np.stack([rows - true_zero, cols - pred_zero, intersection / union], axis=1)
    return true_ids[true_zero:], pred_ids[pred_zero:], pairs


def instance_ious(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every true nucleus (rows) with every predicted nucleus (columns), dense; labels
    sorted, 0 = background, values need not be consecutive. For many nuclei use
    overlapping_pairs."""
    true_ids, pred_ids, pairs = overlapping_pairs(true_labels, pred_labels)
    ious = np.zeros((len(true_ids), len(pred_ids)))
    ious[pairs[:, 0].astype(int), pairs[:, 1].astype(int)] = pairs[:, 2]
    return ious


@dataclasses.dataclass(frozen=True)
class InstanceScores:
    """Matches of predicted to true nuclei at each IoU threshold (one image, or summed)."""

    thresholds: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]

    def _ratio(self, numerator, denominator) -> tuple[float, ...]:
        return tuple(n / d if d else 1.0 for n, d in zip(numerator, denominator))

    @property
    def average_precision(self) -> tuple[float, ...]:
        """TP / (TP + FP + FN) at each threshold: what the Data Science Bowl called
        'average precision' (1.0 when there is nothing to find and nothing found)."""
        return self._ratio(self.tp, [t + p + n for t, p, n in zip(self.tp, self.fp, self.fn)])

    @property
    def dsb_score(self) -> float:
        """Mean of average_precision over the thresholds (the DSB 2018 score of one image)."""
        return float(np.mean(self.average_precision))

    @property
    def f1(self) -> tuple[float, ...]:
        return self._ratio([2 * t for t in self.tp],
                           [2 * t + p + n for t, p, n in zip(self.tp, self.fp, self.fn)])

    def at(self, threshold: float) -> int:
        return self.thresholds.index(round(threshold, 2))

    def __add__(self, other: "InstanceScores") -> "InstanceScores":
        return InstanceScores(self.thresholds,
                              *(tuple(a + b for a, b in zip(x, y)) for x, y in
                                ((self.tp, other.tp), (self.fp, other.fp), (self.fn, other.fn))))

    def as_dict(self) -> dict:
        i = self.at(0.5)
        return {"ap_50": self.average_precision[i], "ap_75": self.average_precision[self.at(0.75)],
                "dsb_score": self.dsb_score, "f1_50": self.f1[i], "tp_50": self.tp[i],
                "fp_50": self.fp[i], "fn_50": self.fn[i]}


def match_instances(true_labels: np.ndarray, pred_labels: np.ndarray,
                    thresholds=IOU_THRESHOLDS) -> InstanceScores:
    """Count true positives (a true nucleus with a predicted one of IoU > threshold), false
    positives and false negatives at each threshold. Thresholds must be >= 0.5, where a
    nucleus can match at most one other and no assignment problem arises."""
    thresholds = tuple(round(float(t), 2) for t in thresholds)
    if min(thresholds) < 0.5:
        raise ValueError("IoU thresholds below 0.5 need an assignment step; use >= 0.5")
    true_ids, pred_ids, pairs = overlapping_pairs(true_labels, pred_labels)
    n_true, n_pred = len(true_ids), len(pred_ids)
    # Above IoU 0.5 a pair is the only match of both its nuclei: count pairs, not rows.
    tp = tuple(int(np.count_nonzero(pairs[:, 2] > t)) for t in thresholds)
    return InstanceScores(thresholds, tp, tuple(n_pred - t for t in tp),
                          tuple(n_true - t for t in tp))


def missed_causes(true_labels: np.ndarray, predicted: np.ndarray, small: int = 30) -> Counter:
    """Why the true nuclei that no prediction matches at IoU > 0.5 were missed, counted:
    'merged' (the prediction overlapping it most overlaps another true nucleus too, or matches
    one), 'small' (under `small` pixels), 'not found' (nothing overlaps it), 'poor overlap'."""
    true_ids = np.unique(true_labels)
    true_ids = true_ids[true_ids > 0]
    causes = Counter()
    if not len(true_ids):
        return causes
    ious = instance_ious(true_labels, predicted)  # rows: true_ids, columns: predicted nuclei
    areas = np.bincount(np.searchsorted(true_ids, true_labels[true_labels > 0]),
                        minlength=len(true_ids))
    matched_pred = (ious > 0.5).any(axis=0)
    for row in np.flatnonzero(~(ious > 0.5).any(axis=1)):
        best = int(ious[row].argmax()) if ious.shape[1] else None
        if areas[row] < small:
            causes["small"] += 1
        elif best is None or ious[row, best] == 0:
            causes["not found"] += 1
        elif matched_pred[best] or (ious[:, best] > 0).sum() > 1:
            causes["merged"] += 1
        else:
            causes["poor overlap"] += 1
    return causes

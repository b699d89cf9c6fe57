import numpy as np
import pytest

from nucleiseg.algorithms.metrics import PixelCounts, pixel_counts


def pooled_counts(true_masks, pred_masks):
    return sum(map(pixel_counts, true_masks, pred_masks), PixelCounts())


def test_hand_computed_counts():
    true = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 0],
                     [1, 1, 1, 0]])
    counts = pixel_counts(true, pred)
    assert counts == PixelCounts(tp=3, fp=1, fn=1, tn=3)
    assert counts.accuracy == pytest.approx(6 / 8)
    assert counts.foreground_iou == pytest.approx(3 / 5)
    assert counts.dice == pytest.approx(6 / 8)


def test_labels_count_as_foreground_and_pooling_sums_counts():
    true = [np.array([[0, 3], [2, 0]]), np.zeros((2, 2), int)]
    pred = [np.array([[0, 1], [0, 0]]), np.array([[1, 0], [0, 0]])]
    pooled = pooled_counts(true, pred)
    assert pooled == PixelCounts(tp=1, fp=1, fn=1, tn=5)
    assert pooled.foreground_iou == pytest.approx(1 / 3)


def test_all_background_prediction_scores_zero_iou_but_high_accuracy():
    true = np.zeros((10, 10), int)
    true[:2] = 1
    counts = pixel_counts(true, np.zeros_like(true))
    assert counts.accuracy == pytest.approx(0.8) and counts.foreground_iou == 0 and counts.dice == 0


def test_empty_truth_and_prediction_is_perfect():
    counts = pixel_counts(np.zeros((3, 3)), np.zeros((3, 3)))
    assert counts.foreground_iou == 1.0 and counts.dice == 1.0 and counts.accuracy == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_keras_metrics_match_numpy():
    from nucleiseg.model.keras_metrics import ForegroundDice, ForegroundIoU

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 8, 2)).astype(np.float32)
    true = (rng.random((3, 8, 8)) > 0.6).astype(np.uint8)
    expected = pooled_counts(true, logits.argmax(-1))
    iou, dice = ForegroundIoU(), ForegroundDice()
    for metric in (iou, dice):
        metric.update_state(true[:2], logits[:2])
        metric.update_state(true[2:], logits[2:])  # streaming over batches = pooled
    assert float(iou.result()) == pytest.approx(expected.foreground_iou, abs=1e-6)
    assert float(dice.result()) == pytest.approx(expected.dice, abs=1e-6)


# ---------------------------------------------------------------- instance metrics

from nucleiseg.algorithms.metrics import IOU_THRESHOLDS, instance_ious, match_instances  # noqa: E402


def test_instance_ious_by_hand():
    true = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 7]])
    pred = np.array([[5, 5, 5, 0],
                     [5, 0, 0, 0]])
    ious = instance_ious(true, pred)
    assert ious.shape == (2, 1)
    assert ious[0, 0] == pytest.approx(3 / 5)  # 3 shared of 4 true + 4 predicted - 3
    assert ious[1, 0] == 0


def test_dsb_average_precision_by_hand():
    # true: nuclei 1 (4 px) and 2 (2 px); predicted: one matching nucleus 1 with IoU 3/5, one
    # false positive; nucleus 2 missed.
    true = np.array([[1, 1, 0, 0, 0],
                     [1, 1, 0, 2, 2]])
    pred = np.array([[3, 3, 3, 0, 4],
                     [3, 0, 0, 0, 0]])
    scores = match_instances(true, pred)
    # IoU 0.6 > 0.50 and 0.55: TP 1, FP 1, FN 1 -> 1/3; from 0.60 on (strict >): TP 0 -> 0
    assert scores.tp == (1, 1) + (0,) * 8
    assert scores.fp == (1, 1) + (2,) * 8 and scores.fn == (1, 1) + (2,) * 8
    assert scores.average_precision[:3] == pytest.approx((1 / 3, 1 / 3, 0))
    assert scores.dsb_score == pytest.approx(2 / 3 / 10)
    assert scores.f1[0] == pytest.approx(0.5)


def test_perfect_and_empty_cases():
    labels = np.array([[0, 1, 1], [2, 0, 3]])
    perfect = match_instances(labels, labels * 10)  # label values need not agree
    assert perfect.dsb_score == 1.0 and perfect.tp == (3,) * 10
    nothing = match_instances(np.zeros((3, 3), int), np.zeros((3, 3), int))
    assert nothing.dsb_score == 1.0
    missed = match_instances(labels, np.zeros_like(labels))
    assert missed.dsb_score == 0.0 and missed.fn == (3,) * 10
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_scores_add_up_over_images():
    labels = np.array([[0, 1, 1], [2, 0, 3]])
    total = match_instances(labels, labels) + match_instances(labels, np.zeros_like(labels))
    assert total.tp[0] == 3 and total.fn[0] == 3 and total.average_precision[0] == 0.5


def test_thresholds_below_half_are_refused():
    with pytest.raises(ValueError, match="below 0.5"):
        match_instances(np.zeros((2, 2), int), np.zeros((2, 2), int), thresholds=(0.3,))


def test_instance_metrics_scale_to_more_nuclei_than_16_bits_hold():
    """70,000 one-pixel nuclei: a dense true x predicted IoU matrix would need 39 GB."""
    labels = np.zeros((530, 530), np.int32)
    labels[::2, ::2] = np.arange(1, 265 * 265 + 1).reshape(265, 265)
    assert labels.max() > 65535
    shifted = np.where(labels > 0, labels + 5, 0)  # same nuclei, other numbers
    shifted[0, 0] = 0  # one nucleus missed
    scores = match_instances(labels, shifted)
    n = int(labels.max())
    assert scores.tp[0] == n - 1 and scores.fn[0] == 1 and scores.fp[0] == 0


def test_missed_causes_sorts_each_missed_nucleus_by_why():
    from nucleiseg.algorithms.metrics import missed_causes

    true = np.zeros((60, 80), np.int32)
    pred = np.zeros_like(true)
    true[5:15, 5:15], true[5:15, 15:25] = 1, 2  # two touching nuclei...
    pred[5:15, 5:25] = 1  # ...predicted as one (IoU 0.5 each: not a match)
    true[30:33, 5:8] = 3  # 9 px, missed: small
    true[30:40, 30:40] = 4  # nothing predicted there: not found
    true[45:55, 5:15] = 5
    pred[45:55, 11:21] = 2  # IoU 40/160: poor overlap
    true[45:55, 50:60] = 6
    pred[45:55, 50:60] = 3  # matched: not counted
    causes = missed_causes(true, pred)
    assert causes == {"merged": 2, "small": 1, "not found": 1, "poor overlap": 1}
    assert missed_causes(true, np.zeros_like(true)) == {"small": 1, "not found": 5}
    assert missed_causes(np.zeros_like(true), pred) == {}

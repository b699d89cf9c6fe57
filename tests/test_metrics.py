import numpy as np
import pytest

from nucleiseg.metrics import PixelCounts, pixel_counts, pooled_counts


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
    from nucleiseg.keras_metrics import ForegroundDice, ForegroundIoU

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

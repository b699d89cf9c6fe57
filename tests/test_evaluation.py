"""Evaluation (nucleiseg.evaluation): metrics of a segmenter on labelled images."""

import subprocess
import sys

import numpy as np
from conftest import disk_samples

from nucleiseg.evaluation import classical_segmenter, evaluate_images, model_segmenter


def test_a_perfect_segmenter_scores_one_and_the_report_adds_up():
    samples = disk_samples(3, seed=2)
    images = [image for _, image, _ in samples]
    labels = [label for _, _, label in samples]
    truth = iter(labels)
    report, predicted = evaluate_images(lambda image: (next(truth), None), images, labels,
                                        names=[name for name, _, _ in samples])
    assert report["images"] == 3 and report["loss"] is None
    assert report["dsb_score"] == 1.0 and report["f1_50_pooled"] == 1.0
    assert report["true_nuclei"] == report["predicted_nuclei"] == sum(int(x.max()) for x in labels)
    assert [row["image"] for row in report["per_image"]] == [n for n, _, _ in samples]
    assert all(np.array_equal(a, b) for a, b in zip(predicted, labels))


def test_the_classical_baseline_finds_bright_disks():
    samples = disk_samples(2, seed=3)
    report, _ = evaluate_images(classical_segmenter, [s[1] for s in samples],
                                [s[2] for s in samples])
    assert report["f1_50"] > 0.8


def test_evaluate_classical_needs_no_tensorflow():
    code = ("import sys, nucleiseg.evaluation, nucleiseg.algorithms.targets; "
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_a_model_segmenter_gives_probabilities_and_the_scale_it_chose(bundled_engine):
    engine, record = bundled_engine
    _, image, label = disk_samples(1, shape=(96, 96), seed=4)[0]
    segment = model_segmenter(engine, record["config"])
    report, _ = evaluate_images(segment, [image], [label], target="boundary")
    row = report["per_image"][0]
    assert report["loss"] is not None and {"scale", "diameter", "warning"} <= row.keys()

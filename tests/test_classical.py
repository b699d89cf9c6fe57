import numpy as np
from conftest import make_disks

from nucleiseg.algorithms.classical import segment_classical
from nucleiseg.algorithms.metrics import match_instances


def test_finds_separate_disks_on_dark_and_bright_backgrounds():
    for bright in (False, True):
        image, labels = make_disks(count=5, seed=7, bright_background=bright)
        scores = match_instances(labels, segment_classical(image))
        assert scores.average_precision[0] == 1.0, bright


def test_splits_two_touching_disks():
    yy, xx = np.mgrid[:40, :60]
    nuclei = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 <= 100)
    image = np.where(nuclei, 200, 20).astype(np.uint8)
    assert segment_classical(image).max() == 2


def test_flat_image_has_no_nuclei():
    assert segment_classical(np.full((32, 32), 9, np.uint8)).max() == 0

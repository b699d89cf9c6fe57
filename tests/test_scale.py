import numpy as np
import pytest
from conftest import make_disks

from nucleiseg.algorithms.instances import InstanceOptions
from nucleiseg.algorithms.preprocess import resize_image, resize_labels
from nucleiseg.algorithms.scale import (
    SCALE_LIMITS,
    SCALE_TOLERANCE,
    UNSURE_UPSCALE_LIMIT,
    UPSCALE_TOLERANCE,
    ImageCheck,
    confidence_figures,
    equivalent_diameters,
    guarded_scale,
    is_unsure,
    scale_for,
    scaled_sizes,
    training_nucleus_size,
    typical_diameter,
    warning_for,
)
from nucleiseg.inference.engines import Engine
from nucleiseg.inference.predict import PredictOptions, options_for, segment_checked

CONFIG = {"sampling": "crops", "image_size": 64}
POST = InstanceOptions(min_size=5, split_levels=(), min_confidence=0.0)


def disks(radius: int, shape=(256, 256), count=12, seed=0):
    return make_disks(shape, count=count, radius=(radius, radius + 1), seed=seed)


def threshold_engine() -> Engine:
    """A 'model' that sees every bright pixel as nucleus, whatever the size: the size estimate
    must then follow the image exactly."""
    def predict_logits(tiles):
        nucleus = (tiles.mean(axis=-1) > 0.5).astype(np.float32) * 20 - 10
        return np.stack([-nucleus, nucleus], axis=-1)

    return Engine("threshold", predict_logits, 2)


def test_diameters_of_disks():
    image, labels = disks(8)
    diameters = equivalent_diameters(labels)
    assert len(diameters) == labels.max()
    assert np.allclose(diameters, 16, rtol=0.06)  # a digital disk of radius 8
    diameter, count = typical_diameter(labels)
    assert count == labels.max() and diameter == pytest.approx(np.median(diameters))
    assert typical_diameter(np.zeros((9, 9), int)) == (None, 0)


def test_training_size_summarises_all_nuclei_and_the_spread_of_images():
    small, large = disks(4)[1], disks(12, count=4)[1]
    size = training_nucleus_size([small] * 5 + [large] * 5)
    assert size["images"] == 10
    assert size["image_median_p10"] == pytest.approx(np.median(equivalent_diameters(small)),
                                                     abs=0.01)
    assert size["image_median_p90"] == pytest.approx(np.median(equivalent_diameters(large)),
                                                     abs=0.01)
    every = np.concatenate([equivalent_diameters(small)] * 5 + [equivalent_diameters(large)] * 5)
    assert size["median_diameter"] == pytest.approx(np.median(every), abs=0.01)
    with pytest.raises(ValueError, match="no nuclei"):
        training_nucleus_size([np.zeros((5, 5), int)])


@pytest.mark.parametrize("diameter,expected", [
    (20, 1.0), (17, 1.0), (24, 1.0),  # within the tolerance: left as it is
    (40, 0.5), (10, 2.0), (200, SCALE_LIMITS[0]), (1, SCALE_LIMITS[1]), (None, 1.0)])
def test_scale_brings_nuclei_to_the_training_size(diameter, expected):
    assert scale_for(diameter, 20.0) == pytest.approx(expected)


def test_scales_are_rounded_so_small_differences_in_the_estimate_do_not_matter():
    assert scale_for(12.9, 20.0) == scale_for(13.1, 20.0) == pytest.approx(2 ** (5 / 8))
    assert scale_for(12.9, 20.0) != 20.0 / 12.9


def test_size_thresholds_follow_the_scale():
    assert scaled_sizes({"min_size": 30, "min_split_size": 80}, 0.5) == {
        "min_size": 120, "min_split_size": 320}
    assert scaled_sizes({"min_size": 30}, 4.0) == {"min_size": 2}


def test_confidence_and_uncertainty_from_probabilities():
    probabilities = np.zeros((4, 4, 2), np.uint8)
    probabilities[..., 0] = 255  # background everywhere...
    probabilities[:2, :2, 0] = 0  # ...but a sure nucleus (P 1)
    probabilities[2:, 2:, 0] = 100  # and an unsure one (P 155/255)
    probabilities[0, 3, 0] = 170  # and a pixel of P 85/255: likely, not called nucleus
    confidence, uncertain = confidence_figures(probabilities)
    assert confidence == pytest.approx((4 * 255 + 4 * 155) / 8 / 255)
    assert uncertain == pytest.approx(5 / 9)  # of 9 likely pixels, 5 between 0.25 and 0.75
    assert confidence_figures(np.full((3, 3, 2), 255, np.uint8)) == (None, None)


def test_warnings_say_what_is_wrong_and_nothing_when_all_is_well():
    assert warning_for(ImageCheck(20, 1.0, 0.95, 0.1), 20, 12) == ""
    assert "too large" in warning_for(ImageCheck(240, 0.25, 0.95, 0.1), 20, 3)
    assert "too small" in warning_for(ImageCheck(1.5, 4.0, 0.95, 0.1), 20, 3)
    # resized into what the model handles (80 px at 0.25: 20 px), or seen as they are
    assert warning_for(ImageCheck(80, 0.25, 0.95, 0.1), 20, 3) == ""
    assert warning_for(ImageCheck(45, 1.0, 0.95, 0.1), 20, 3) == ""
    assert warning_for(ImageCheck(None, 1.0, None, None), 20, 0) == "no nuclei found"
    assert "unsure" in warning_for(ImageCheck(20, 1.0, 0.6, 0.1), 20, 5)
    assert "edge of the decision" in warning_for(ImageCheck(20, 1.0, 0.9, 0.6), 20, 5)
    assert warning_for(ImageCheck(20, 1.0, 0.85, 0.45), 20, 5) == ""


@pytest.mark.parametrize("factor", [1.0, 2.0, 3.0])
def test_auto_diameter_follows_a_rescaled_image(factor):
    image, labels = disks(6)
    shape = tuple(round(n * factor) for n in labels.shape)
    image = np.round(resize_image(image.astype(np.float32), shape)).astype(np.uint8)
    labels = resize_labels(labels, shape)
    options = PredictOptions(tile=128, overlap=32, diameter="auto", training_diameter=24.0)
    found, _, check = segment_checked(threshold_engine(), image, CONFIG, options, POST)
    assert found.shape == labels.shape and found.max() == labels.max()
    assert check.diameter == pytest.approx(typical_diameter(labels)[0], rel=0.1)
    assert check.diameter == pytest.approx(12 * factor, rel=0.15)
    assert check.scale == pytest.approx(scale_for(check.diameter, 24.0), rel=0.15)
    assert check.warning == ""


def test_fixed_scale_and_known_diameter_are_used_as_given():
    image, labels = disks(6)
    engine = threshold_engine()
    fixed = PredictOptions(tile=128, overlap=32, scale=0.5)
    assert segment_checked(engine, image, CONFIG, fixed, POST)[2].scale == 0.5
    known = PredictOptions(tile=128, overlap=32, diameter=6.0, training_diameter=24.0)
    found, _, check = segment_checked(engine, image, CONFIG, known, POST)
    assert check.scale == 4.0 and found.shape == labels.shape
    assert found.max() == labels.max()


def test_an_empty_image_is_warned_about_not_rescaled():
    image = np.full((128, 128), 10, np.uint8)
    options = PredictOptions(tile=128, overlap=32, diameter="auto", training_diameter=24.0)
    found, _, check = segment_checked(threshold_engine(), image, CONFIG, options, POST)
    assert found.max() == 0 and check.scale == 1.0 and check.warning == "no nuclei found"


def test_auto_needs_a_model_that_records_its_nucleus_size():
    from nucleiseg.errors import UsageError

    with pytest.raises(UsageError, match="--diameter needs"):
        PredictOptions(diameter="auto")
    assert options_for({}).diameter is None
    recorded = options_for({"nucleus_size": {"median_diameter": 19.5}})
    assert recorded.diameter == "auto" and recorded.training_diameter == 19.5


def test_bundled_model_estimate_follows_a_rescaled_sample_image(bundled_engine):
    """The real model: nuclei drawn twice as large are estimated twice as large."""
    from nucleiseg.io.images import bundled_sample, read_image

    engine, record = bundled_engine
    image = read_image(bundled_sample("test") / "images" / "fluorescence_df53d0b6.png")
    options = PredictOptions(diameter="auto", training_diameter=19.45)
    native = segment_checked(engine, image, record["config"], options)[2]
    shape = tuple(2 * n for n in image.shape[:2])
    large = np.round(resize_image(image.astype(np.float32), shape)).astype(image.dtype)
    doubled = segment_checked(engine, large, record["config"], options)[2]
    assert doubled.diameter / native.diameter == pytest.approx(2.0, rel=0.2)
    for check in (native, doubled):  # both reach the model at about the training size
        assert 1 / SCALE_TOLERANCE <= check.diameter * check.scale / 19.45 <= UPSCALE_TOLERANCE


def test_many_small_fragments_do_not_outvote_the_nuclei():
    """Noise fragments (2x2 px) outnumber the 12 nuclei (about 16 px across) two to one: the
    plain median says 'tiny', the area-weighted estimate still says 16."""
    _, labels = disks(8)
    rng = np.random.default_rng(0)
    nuclei, fragments = int(labels.max()), 0
    while fragments < 2 * nuclei:
        y, x = rng.integers(0, 254, 2)
        if not labels[max(0, y - 2):y + 4, max(0, x - 2):x + 4].any():
            labels[y:y + 2, x:x + 2] = labels.max() + 1
            fragments += 1
    assert typical_diameter(labels)[0] < 4
    assert typical_diameter(labels, weighting="area")[0] == pytest.approx(16, rel=0.06)


def test_an_unsure_first_pass_never_scales_up_past_the_guard():
    """Fragments of 5 px found with a mean P(nucleus) of 0.6: a sure pass would blow the image
    up 4x to bring them to 24 px; the guard keeps it at UNSURE_UPSCALE_LIMIT and says so."""
    _, fragments = disks(2, count=30)  # about 5 px across
    assert is_unsure(0.6, 0.2) and is_unsure(0.9, 0.7) and not is_unsure(0.9, 0.2)
    assert not is_unsure(None, None)
    sure = guarded_scale(fragments, 24.0, unsure=False)
    assert sure[0] == SCALE_LIMITS[1] and sure[2] == ""
    scale, diameter, note = guarded_scale(fragments, 24.0, unsure=True)
    assert scale == UNSURE_UPSCALE_LIMIT and diameter == pytest.approx(5, abs=1)
    assert "first pass unsure" in note and "--diameter" in note
    # downscaling (large nuclei) is not limited, and a sure small scale-up is left alone
    _, large = disks(24, count=4)
    assert guarded_scale(large, 24.0, unsure=True) == (
        scale_for(typical_diameter(large, "area")[0], 24.0),
        typical_diameter(large, "area")[0], "")


def test_segmenting_with_an_unsure_model_keeps_a_sane_scale():
    """End to end: a 'model' that calls the small disks nucleus with P 0.6 only."""
    image, _ = disks(3, count=20)

    def predict_logits(tiles):
        bright = tiles.mean(axis=-1) > 0.5
        nucleus = np.where(bright, np.log(0.6 / 0.4), -10).astype(np.float32)
        return np.stack([np.zeros_like(nucleus), nucleus], axis=-1)

    options = PredictOptions(tile=128, overlap=32, diameter="auto", training_diameter=24.0)
    labels, _, check = segment_checked(Engine("unsure", predict_logits, 2), image, CONFIG,
                                       options, POST)
    assert check.scale == UNSURE_UPSCALE_LIMIT and labels.shape == image.shape[:2]
    assert "first pass unsure" in check.warning and "unsure" in check.warning


def test_a_sure_pass_after_an_unsure_one_decides_on():
    """Tiny nuclei the 'model' is unsure of at their own size but sure of once enlarged: the
    unsure first pass upscales only to the guard, and the sure pass there sets the scale."""
    from scipy import ndimage

    image, _ = disks(3, count=20)

    def predict_logits(tiles):
        bright = tiles.mean(axis=-1) > 0.5
        p = np.full(bright.shape, 0.0, np.float32)
        for i, tile in enumerate(bright):
            blobs, _ = ndimage.label(tile)
            areas = np.bincount(blobs.ravel())
            areas[0] = 0
            p[i] = np.where(tile, np.where(areas[blobs] >= 45, 0.97, 0.6), 0.0)
        nucleus = np.log(np.clip(p, 1e-4, 1 - 1e-4) / np.clip(1 - p, 1e-4, 1))
        return np.stack([np.zeros_like(nucleus), nucleus], axis=-1)

    options = PredictOptions(tile=128, overlap=32, diameter="auto", training_diameter=24.0)
    _, _, check = segment_checked(Engine("size-shy", predict_logits, 2), image, CONFIG,
                                  options, POST)
    assert check.scale > 2 * UNSURE_UPSCALE_LIMIT  # not stopped at the guard
    assert check.unsure and "first pass unsure" not in (check.warning or "")

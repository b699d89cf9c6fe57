"""Stain normalisation (Reinhard in CIELAB) on colour images made in code."""

import numpy as np
import pytest

from nucleiseg.algorithms.stain import (
    StainMatch,
    StainReference,
    lab_statistics,
    reference_from,
    stain_match,
)

REFERENCE = StainReference((70.0, 15.0, -10.0), (12.0, 8.0, 6.0))


def he_like(seed=0, shape=(96, 128), pale=False):
    """uint8 RGB: purple blobs on pink, the blobs pale (low contrast) when asked."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    blobs = np.zeros(shape)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 10)
        blobs = np.maximum(blobs, (np.hypot(yy - cy, xx - cx) < r).astype(float))
    pink, purple = np.array([235, 170, 200]), np.array([150, 90, 170] if pale else [80, 30, 120])
    image = pink * (1 - blobs[..., None]) + purple * blobs[..., None]
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_a_matched_image_has_the_reference_statistics():
    image = he_like(pale=True)
    matched = stain_match(image, REFERENCE).apply(image)
    found = lab_statistics(matched)
    assert matched.dtype == np.uint8 and matched.shape == image.shape
    np.testing.assert_allclose(found.mean, REFERENCE.mean, atol=1.0)
    np.testing.assert_allclose(found.std, REFERENCE.std, rtol=0.1)


def test_matching_is_per_pixel_so_tiles_agree_with_the_whole_image():
    image = he_like(seed=1)
    match = stain_match(image, REFERENCE)
    whole = match.apply(image)
    np.testing.assert_array_equal(match.apply(image[10:50, 30:90]), whole[10:50, 30:90])


def test_strips_give_the_same_pixels(monkeypatch):
    import nucleiseg.algorithms.stain as stain

    image = he_like(seed=2)
    match = stain_match(image, REFERENCE)
    whole = match.apply(image)
    monkeypatch.setattr(stain, "STRIP_PIXELS", 500)  # a few rows at a time
    np.testing.assert_array_equal(match.apply(image), whole)


def test_grey_images_and_no_reference_are_left_alone():
    grey = np.repeat(he_like()[..., :1], 3, axis=-1)
    assert stain_match(grey, REFERENCE) is None
    assert stain_match(grey[..., 0], REFERENCE) is None
    assert stain_match(he_like(), None) is None
    assert stain_match(he_like().astype(np.float32), REFERENCE) is None  # range unknown


def test_16_bit_and_rgba_match_like_8_bit():
    image = he_like(seed=3)
    match = stain_match(image, REFERENCE)
    wide = image.astype(np.uint16) * 257
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    np.testing.assert_allclose(lab_statistics(wide).mean, match.source.mean, atol=1e-6)
    np.testing.assert_array_equal(StainMatch(match.source, REFERENCE).apply(wide),
                                  match.apply(image))
    np.testing.assert_array_equal(match.apply(rgba), match.apply(image))


def test_reference_is_the_mean_of_the_images_statistics_and_round_trips_the_record():
    images = [he_like(seed=s) for s in range(3)]
    reference = reference_from(images)
    stats = [lab_statistics(image) for image in images]
    np.testing.assert_allclose(reference.mean, np.mean([s.mean for s in stats], 0))
    record = {"stain_reference": reference.as_record("3 made in code")}
    again = StainReference.from_record(record)
    np.testing.assert_allclose(again.mean, reference.mean, atol=1e-4)
    np.testing.assert_allclose(again.std, reference.std, atol=1e-4)
    assert StainReference.from_record({}) is None
    with pytest.raises(ValueError):
        reference_from([])


def test_prediction_matches_colour_images_before_the_model():
    """A fake model that sees only the input: with a stain reference the pale image reaches
    it matched (darker nuclei), so the options, the intensity range and the result follow."""
    from nucleiseg.inference.engines import Engine
    from nucleiseg.inference.predict import (
        PredictOptions,
        predict_quantised,
        with_stain,
    )

    seen = []

    def logits(tiles):
        seen.append(tiles.copy())
        return np.zeros(tiles.shape[:-1] + (3,), np.float32)

    engine = Engine("recording", logits, 3)
    image = he_like(pale=True, shape=(256, 256))
    options = PredictOptions(tile=128, overlap=32, stain_reference=REFERENCE)
    matched_options, intensity = with_stain(image, options, None)
    assert matched_options.stain == stain_match(image, REFERENCE)
    predict_quantised(engine, image, {"sampling": "crops"}, matched_options, intensity)
    from nucleiseg.algorithms.preprocess import normalize_image

    expected = normalize_image(matched_options.stain.apply(image))
    np.testing.assert_allclose(seen[0][0], expected[:128, :128], atol=1e-6)
    grey = np.repeat(image[..., :1], 3, axis=-1)
    assert with_stain(grey, options, (0.0, 255.0)) == (options, (0.0, 255.0))


def test_the_colour_table_gives_the_converted_pixels():
    import dataclasses

    image = he_like(seed=4)
    match = stain_match(image, REFERENCE)
    np.testing.assert_array_equal(dataclasses.replace(match, tabled=True).apply(image),
                                  match.apply(image))

import numpy as np
import pytest

from nucleiseg.algorithms.tiling import (
    gaussian_weights,
    predict_tiled,
    tile_layout,
    tile_starts,
    with_test_time_augmentation,
)


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 32), (256, 256, 32), (300, 256, 64),
                                                 (2049, 512, 64)])
def test_tiles_cover_the_image_and_the_last_is_flush(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    if length > tile:  # the fewest tiles that can overlap enough
        assert len(starts) == -(-(length - overlap) // (tile - overlap))


def test_tiles_are_fitted_to_the_image_so_the_model_computes_little_beyond_it():
    """A 520 x 696 DSB image took four 512² tiles (2.9x its pixels): now one row of 544 and
    two columns of 384 (1.15x)."""
    assert tile_layout(520, 512, 64) == (320, [0, 200])  # two shortened tiles, not 2 x 512
    assert tile_layout(520, 640, 64) == (544, [0])  # one tile, padded to a multiple of 32
    assert tile_layout(256, 512, 64) == (256, [0])
    assert tile_layout(4096, 512, 64) == (512, tile_starts(4096, 512, 64))  # already fitted
    size, starts = tile_layout(696, 640, 64)
    assert size == 384 and starts == [0, 312]


def test_gaussian_weights_peak_in_the_centre_and_never_reach_zero():
    weights = gaussian_weights(64)
    assert weights.shape == (64, 64) and weights.max() == pytest.approx(1.0)
    assert weights.min() > 0 and weights[32, 32] > weights[0, 0]


def _smooth_field(shape, classes=3, seed=0):
    """A position-dependent 'model output' the tiling must reproduce exactly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    logits = np.stack([np.sin(yy / (7 + c) + rng.random()) + np.cos(xx / (5 + c)) for c in
                       range(classes)], -1)
    e = np.exp(logits)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_position_independent_model_is_reproduced_exactly():
    """A 'model' that returns the same per-pixel value wherever a pixel sits in a tile must
    give back exactly that value after blending: no seams, nothing lost at the edges."""
    image = np.random.default_rng(1).random((300, 470, 3)).astype(np.float32)

    def pointwise(tiles):  # probabilities from the pixel itself only
        e = np.exp(tiles * [1.0, 2.0, 3.0])
        return e / e.sum(-1, keepdims=True)

    expected = pointwise(image[None])[0]
    got = predict_tiled(pointwise, image, 3, tile=128, overlap=32, batch_size=3)
    assert got.shape == (300, 470, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_small_image_is_predicted_whole_and_tiled_agrees_with_whole():
    """With a real (context-using) network, tiles agree closely with whole-image prediction."""
    import keras
    from conftest import TINY_MODEL

    from nucleiseg.inference.predict import probability_function
    from nucleiseg.model.unet import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(num_classes=3, **TINY_MODEL)
    predict = probability_function(model)
    image = np.random.default_rng(2).random((192, 192, 3)).astype(np.float32)
    whole = predict(image[None])[0]
    assert np.allclose(predict_tiled(predict, image, 3, tile=256), whole)  # one tile: whole
    tiled = predict_tiled(predict, image, 3, tile=128, overlap=64)
    assert np.abs(tiled - whole).mean() < 0.02
    assert (tiled.argmax(-1) == whole.argmax(-1)).mean() > 0.95


def test_test_time_augmentation_inverts_every_transform():
    image = np.random.default_rng(3).random((2, 32, 32, 3)).astype(np.float32)
    identity = with_test_time_augmentation(lambda tiles: tiles, 8)
    np.testing.assert_allclose(identity(image), image, atol=1e-6)
    non_square = np.random.default_rng(4).random((1, 32, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(with_test_time_augmentation(lambda t: t, 8)(non_square),
                               non_square, atol=1e-6)


@pytest.mark.parametrize("sampling", ["resize", "crops"])
def test_probabilities_come_back_at_the_image_size_whatever_the_scale(sampling):
    import keras
    from conftest import TINY_MODEL

    from nucleiseg.inference.predict import PredictOptions, predict_probabilities
    from nucleiseg.model.unet import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(num_classes=3, **TINY_MODEL)
    image = (np.random.default_rng(5).random((70, 130)) * 4000).astype(np.uint16)
    config = {"sampling": sampling, "image_size": 64}
    for scale in (1.0, 0.5, 2.0):
        probabilities = predict_probabilities(model, image, config,
                                              PredictOptions(tile=64, overlap=16, scale=scale))
        assert probabilities.shape == (70, 130, 3)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)

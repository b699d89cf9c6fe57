import keras
import numpy as np
import pytest
from conftest import TINY_MODEL

from nucleiseg.errors import NucleisegError, UsageError
from nucleiseg.model.unet import ENCODER_SKIPS, build_encoder, build_unet, check_image_size


@pytest.mark.parametrize("size", [32, 64, 96])
def test_output_is_per_pixel_logits(size):
    model = build_unet(num_classes=3, **TINY_MODEL)
    out = model(np.zeros((2, size, size, 3), np.float32))
    assert tuple(out.shape) == (2, size, size, 3)


def test_fixed_size_and_non_square_inputs():
    model = build_unet(image_size=64, **TINY_MODEL)
    assert model.input_shape == (None, 64, 64, 3)
    flexible = build_unet(**TINY_MODEL)
    assert tuple(flexible(np.zeros((1, 64, 96, 3), np.float32)).shape) == (1, 64, 96, 2)


def test_encoder_taps_and_strides():
    encoder = build_encoder(alpha=0.35)
    outputs = encoder(np.zeros((1, 64, 64, 3), np.float32))
    assert [tuple(o.shape[1:3]) for o in outputs] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert all(encoder.get_layer(name) for name in ENCODER_SKIPS)


def test_every_batchnorm_momentum_is_set():
    model = build_unet(bn_momentum=0.9, **TINY_MODEL)
    layers = model.get_layer("encoder").layers + model.layers
    momenta = [layer.momentum for layer in layers
               if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(momenta) > 40 and set(momenta) == {0.9}


@pytest.mark.parametrize("size,nearest", [(100, "96 or 128"), (20, "32"), (130, "128 or 160")])
def test_bad_size_names_the_sizes_that_work(size, nearest):
    expected = f"not a multiple of 32; nearest sizes that work: {nearest}"
    with pytest.raises(UsageError, match=expected):
        check_image_size(size)


def test_frozen_random_encoder_is_refused():
    with pytest.raises(UsageError, match="pretrained weights"):
        build_unet(freeze_encoder=True, encoder_weights="none")


def test_offline_imagenet_download_fails_clearly(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(NucleisegError, match="could not download the ImageNet weights.*"
                                             "--encoder-weights none"):
        build_unet(encoder_weights="imagenet")


def test_frozen_encoder_is_not_trainable(monkeypatch):
    real = keras.applications.MobileNetV2
    monkeypatch.setattr(keras.applications, "MobileNetV2",
                        lambda **kw: real(**{**kw, "weights": None}))  # no download in tests
    model = build_unet(encoder_weights="imagenet", freeze_encoder=True, **TINY_MODEL)
    assert model.get_layer("encoder").trainable is False
    assert all(not w.trainable for w in model.get_layer("encoder").weights)
    assert any(w.trainable for w in model.get_layer("decoder_1_conv").weights)

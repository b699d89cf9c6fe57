"""The U-Net: an ImageNet MobileNetV2 encoder and a pix2pix-style decoder (pure factory)."""

from __future__ import annotations

import keras

from nucleiseg.config import SIZE_MULTIPLE, check_image_size  # noqa: F401  (re-exported)
from nucleiseg.errors import NucleisegError, UsageError

# Encoder taps, shallow to deep: strides 2, 4, 8, 16 and 32.
ENCODER_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
    "block_16_project",
)
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def build_encoder(encoder_weights: str = "none", alpha: float = 1.0,
                  bn_momentum: float = 0.9) -> keras.Model:
    """MobileNetV2 (no top) returning the five skip tensors of ENCODER_SKIPS.

    MobileNetV2's BatchNorm momentum is 0.999: trained from scratch for a few hundred steps,
    its moving statistics never catch up and the model predicts only background in inference
    mode. `bn_momentum` (default 0.9, also used in the decoder) fixes that; it has no effect on
    a frozen encoder.
    """
    weights = None if encoder_weights == "none" else encoder_weights
    if weights is not None and alpha not in IMAGENET_ALPHAS:
        raise UsageError(f"ImageNet weights exist for encoder alpha {IMAGENET_ALPHAS}; got {alpha}")
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(None, None, 3), include_top=False, weights=weights, alpha=alpha
        )
    except Exception as exc:  # keras.utils.get_file raises a bare Exception when offline
        if weights is None:
            raise
        raise NucleisegError(
            "could not download the ImageNet weights of MobileNetV2 (no internet?): "
            f"{exc}. Use --encoder-weights none, or put the weights file in ~/.keras/models/"
        ) from None
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    outputs = [base.get_layer(name).output for name in ENCODER_SKIPS]
    return keras.Model(base.input, outputs, name="encoder")


def upsample_block(x, filters: int, dropout: float, name: str, bn_momentum: float = 0.9):
    """pix2pix upsample: Conv2DTranspose (stride 2) -> BatchNorm -> optional Dropout -> ReLU."""
    x = keras.layers.Conv2DTranspose(
        filters, 3, strides=2, padding="same", use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02), name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_unet(
    num_classes: int = 2,
    encoder_weights: str = "none",
    freeze_encoder: bool = False,
    encoder_alpha: float = 1.0,
    decoder_filters=(512, 256, 128, 64),
    dropout: float = 0.0,
    bn_momentum: float = 0.9,
    image_size: int | None = None,
) -> keras.Model:
    """Build (not compile) the U-Net. Input: float images in [0, 1], H x W x 3 with H and W
    multiples of 32 (any size: the network is fully convolutional; `image_size` fixes it).
    Output: per-pixel logits, H x W x num_classes."""
    if image_size is not None:
        check_image_size(image_size)
    if len(decoder_filters) != len(ENCODER_SKIPS) - 1:
        raise UsageError(f"decoder_filters needs {len(ENCODER_SKIPS) - 1} values; "
                         f"got {list(decoder_filters)}")
    if freeze_encoder and encoder_weights == "none":
        raise UsageError("a frozen encoder needs pretrained weights (--encoder-weights imagenet)")
    encoder = build_encoder(encoder_weights, encoder_alpha, bn_momentum)
    encoder.trainable = not freeze_encoder

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_mobilenet_range")(inputs)
    *skips, x = encoder(x)
    for index, (filters, skip) in enumerate(zip(decoder_filters, reversed(skips))):
        x = upsample_block(x, filters, dropout, f"decoder_{index + 1}", bn_momentum)
        x = keras.layers.Concatenate(name=f"decoder_{index + 1}_skip")([x, skip])
    logits = keras.layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same",
                                          name="logits")(x)
    return keras.Model(inputs, logits, name="unet")

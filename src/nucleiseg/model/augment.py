"""The joint image and mask augmentation layer (flips and 90-degree rotations). A Keras layer
registered as "nucleiseg>Augment", so models saved with it load (nucleiseg.model.saving)
without the training pipelines."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="nucleiseg")
class Augment(keras.layers.Layer):
    """Random flips (horizontal, vertical) and 90-degree rotations, the same for image and mask.

    A random transpose plus random horizontal and vertical flips draws uniformly from all eight
    symmetries of the square (rotations by 0/90/180/270 degrees, with or without a flip).
    Non-square batches get flips only. Call with (images, masks) batches: (N,H,W,C), (N,H,W).
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, masks, weights=None, training=True):
        if not training:
            return (images, masks) if weights is None else (images, masks, weights)
        channels = [images, keras.ops.expand_dims(keras.ops.cast(masks, images.dtype), -1)]
        if weights is not None:  # per-pixel loss weights move with the mask
            channels.append(keras.ops.expand_dims(keras.ops.cast(weights, images.dtype), -1))
        both = keras.ops.concatenate(channels, axis=-1)
        batch = keras.ops.shape(both)[0]
        square = both.shape[1] is not None and both.shape[1] == both.shape[2]

        def maybe(transform, x):
            coin = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator) < 0.5
            return keras.ops.where(coin, transform(x), x)

        both = maybe(lambda x: keras.ops.flip(x, axis=2), both)
        both = maybe(lambda x: keras.ops.flip(x, axis=1), both)
        if square:
            both = maybe(lambda x: keras.ops.transpose(x, (0, 2, 1, 3)), both)
        channels = images.shape[-1]
        images, masks = both[..., :channels], both[..., channels]
        masks = keras.ops.cast(keras.ops.round(masks), "uint8")
        return (images, masks) if weights is None else (images, masks, both[..., channels + 1])

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}

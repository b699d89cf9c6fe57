"""Splitting, array preparation, joint augmentation and the tf.data pipelines."""

from __future__ import annotations

import math
from collections import defaultdict

import keras
import numpy as np

from nucleiseg.preprocess import normalize_image, resize_image, resize_labels


def split_names(names, val_fraction: float = 0.3, seed: int = 123, groups=None):
    """Deterministic train/validation split of sample names.

    With `groups` (e.g. image kind per name) each group is split on its own, so a rare kind is
    represented on both sides whenever it has at least two samples. The result depends only on
    the set of names, the fraction and the seed, never on listing order.
    """
    names = sorted(names)
    groups = groups or {}
    by_group = defaultdict(list)
    for name in names:
        by_group[groups.get(name, "")].append(name)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for group in sorted(by_group):
        members = by_group[group]
        order = rng.permutation(len(members))
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """Instance labels -> per-pixel class targets (0 background, 1 nucleus)."""
    return (labels > 0).astype(np.uint8)


def prepare_arrays(images, labels, image_size: int):
    """Normalise and resize (images bilinear, masks nearest) to image_size x image_size.

    Returns float32 images (N, S, S, 3) and uint8 class masks (N, S, S).
    """
    shape = (image_size, image_size)
    x = np.stack([resize_image(normalize_image(image), shape) for image in images])
    y = np.stack([labels_to_classes(resize_labels(label, shape)) for label in labels])
    return x, y


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

    def call(self, images, masks, training=True):
        if not training:
            return images, masks
        masks = keras.ops.expand_dims(keras.ops.cast(masks, images.dtype), -1)
        both = keras.ops.concatenate([images, masks], axis=-1)
        batch = keras.ops.shape(both)[0]
        square = both.shape[1] is not None and both.shape[1] == both.shape[2]

        def maybe(transform, x):
            coin = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator) < 0.5
            return keras.ops.where(coin, transform(x), x)

        both = maybe(lambda x: keras.ops.flip(x, axis=2), both)
        both = maybe(lambda x: keras.ops.flip(x, axis=1), both)
        if square:
            both = maybe(lambda x: keras.ops.transpose(x, (0, 2, 1, 3)), both)
        images, masks = both[..., :-1], both[..., -1]
        return images, keras.ops.cast(keras.ops.round(masks), "uint8")

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def make_train_dataset(images, masks, batch_size: int, seed: int, augment: bool = True):
    """cache -> shuffle -> batch -> repeat -> augment -> prefetch (the original's order).

    Returns (dataset, steps_per_epoch); the dataset repeats forever.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).cache()
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).repeat()
    if augment:
        augmenter = Augment(seed=seed)
        dataset = dataset.map(lambda x, y: augmenter(x, y), num_parallel_calls=tf.data.AUTOTUNE)
    steps = max(1, math.ceil(len(images) / batch_size))
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def make_val_dataset(images, masks, batch_size: int):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch_size)
    return dataset.cache().prefetch(tf.data.AUTOTUNE)

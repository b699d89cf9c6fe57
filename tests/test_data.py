import numpy as np

from conftest import make_disks
from nucleiseg.data import (Augment, labels_to_classes, make_train_dataset, make_val_dataset,
                            prepare_arrays, split_names)


def test_split_is_deterministic_disjoint_and_order_free():
    names = [f"n{i:03d}" for i in range(100)]
    train, val = split_names(names, 0.3, seed=123)
    assert len(val) == 30 and len(train) == 70 and not set(train) & set(val)
    assert sorted(train + val) == names
    assert split_names(list(reversed(names)), 0.3, seed=123) == (train, val)
    assert split_names(names, 0.3, seed=124) != (train, val)


def test_split_keeps_every_kind_on_both_sides():
    names = [f"f{i}" for i in range(40)] + ["b1", "b2"] + [f"h{i}" for i in range(7)]
    kinds = {n: {"f": "fluorescence", "b": "brightfield", "h": "histology"}[n[0]] for n in names}
    train, val = split_names(names, 0.15, seed=1, groups=kinds)
    for kind in ("fluorescence", "brightfield", "histology"):
        assert any(kinds[n] == kind for n in train) and any(kinds[n] == kind for n in val)


def test_prepare_arrays_resizes_masks_nearest():
    images, labels = zip(*(make_disks((70, 90), seed=s) for s in range(3)))
    x, y = prepare_arrays(images, labels, 32)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (3, 32, 32) and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1}


def _encoded_batch(n=16, size=16):
    """Images whose every pixel value is unique, and masks equal to a function of the image."""
    base = np.arange(size * size, dtype=np.float32).reshape(size, size) / (size * size)
    images = np.stack([np.stack([base + i, base * 0 + i, base], -1) for i in range(n)])
    masks = (np.arange(size * size).reshape(size, size) % 3 == 0).astype(np.uint8)
    return images.astype(np.float32), np.stack([masks] * n)


def test_augment_moves_image_and_mask_together():
    images, masks = _encoded_batch()
    reference = {round(float(v), 5): int(m) for v, m in zip(images[0, ..., 2].ravel(),
                                                           masks[0].ravel())}
    layer = Augment(seed=0)
    seen = set()
    for _ in range(6):
        out_images, out_masks = (np.asarray(t) for t in layer(images, masks))
        assert out_images.shape == images.shape and out_masks.shape == masks.shape
        for image, mask in zip(out_images, out_masks):
            # the mask pixel that travels with each image pixel is the one it started with
            got = [reference[round(float(v), 5)] for v in image[..., 2].ravel()]
            np.testing.assert_array_equal(got, mask.ravel())
            seen.add(image[..., 2].tobytes())
    assert len(seen) == 8  # all eight flips/rotations of the square occur


def test_augment_flips_only_for_non_square():
    images = np.random.default_rng(0).random((8, 16, 32, 3)).astype(np.float32)
    masks = (images[..., 0] > 0.5).astype(np.uint8)
    out_images, out_masks = (np.asarray(t) for t in Augment(seed=1)(images, masks))
    np.testing.assert_array_equal((out_images[..., 0] > 0.5).astype(np.uint8), out_masks)
    assert out_images.shape == images.shape


def test_augment_is_identity_when_not_training():
    images, masks = _encoded_batch(4)
    out_images, out_masks = Augment(seed=0)(images, masks, training=False)
    np.testing.assert_array_equal(np.asarray(out_images), images)


def test_datasets_batch_repeat_and_align():
    images = np.random.default_rng(0).random((10, 32, 32, 3)).astype(np.float32)
    masks = labels_to_classes((images[..., 0] > 0.5).astype(np.int32))
    train, steps = make_train_dataset(images, masks, batch_size=4, seed=0)
    assert steps == 3
    batches = list(train.take(7))  # repeats past one epoch
    assert len(batches) == 7
    for x, y in batches:
        np.testing.assert_array_equal((np.asarray(x)[..., 0] > 0.5).astype(np.uint8), np.asarray(y))
    val = list(make_val_dataset(images, masks, batch_size=4))
    assert [len(x) for x, _ in val] == [4, 4, 2]

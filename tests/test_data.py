import numpy as np
import pytest
from conftest import make_disks
from scipy import ndimage

from nucleiseg.training.data import (
    Augment,
    contact_pixels,
    labels_to_classes,
    make_train_dataset,
    make_val_dataset,
    name_clusters,
    pale_nuclei,
    prepare_arrays,
    random_blur_noise,
    random_crops,
    random_intensity,
    random_stain,
    render_as_he,
    split_names,
)


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


def test_split_holds_out_whole_patients():
    names = [f"{patient:02d}_{tile}" for patient in range(1, 12) for tile in range(1, 5)]
    clusters = name_clusters(names, "^[^_]+")
    assert clusters["04_3"] == "04"
    train, val = split_names(names, 0.2, seed=7, clusters=clusters)
    assert {n[:2] for n in train}.isdisjoint({n[:2] for n in val})
    assert len({n[:2] for n in val}) == 2 and sorted(train + val) == sorted(names)


def test_split_with_singleton_clusters_is_the_plain_split():
    names = [f"{i:040x}" for i in range(60)]  # DSB-like ids: the pattern matches whole names
    plain = split_names(names, 0.15, seed=123)
    assert split_names(names, 0.15, seed=123, clusters=name_clusters(names, "^[^_]+")) == plain


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


def _disk_grid(size=512, step=40, radius=10):
    """A grey image of equal disks on a grid (value 1 inside) and its instance labels."""
    yy, xx = np.mgrid[:size, :size]
    dy, dx = (yy % step) - step // 2, (xx % step) - step // 2
    inside = dy**2 + dx**2 <= radius**2
    labels = np.where(inside, (yy // step) * (size // step) + xx // step + 1, 0).astype(np.int32)
    image = np.repeat(inside[..., None], 3, -1).astype(np.float32)
    return image, labels


def _median_whole_area(classes):
    """Median pixel area of the foreground objects that do not touch the crop's border."""
    objects, _ = ndimage.label(classes > 0)
    border = np.unique(np.concatenate([objects[0], objects[-1], objects[:, 0], objects[:, -1]]))
    areas = np.bincount(objects.ravel())[1:]
    inner = [a for i, a in enumerate(areas, start=1) if i not in border]
    return float(np.median(inner))


def test_zoomed_crops_change_nucleus_size_and_keep_image_and_target_aligned():
    image, labels = _disk_grid()
    crops = random_crops([image], [labels], 128, seed=0, target="boundary", zoom=2.0)
    areas = []
    for _ in range(30):
        x, y = next(crops)
        assert x.shape == (128, 128, 3) and y.shape == (128, 128) and y.dtype == np.uint8
        assert set(np.unique(y)) <= {0, 1, 2} and (y == 2).any()  # boundary made per crop
        assert np.mean((x[..., 0] > 0.5) != (y > 0)) < 0.02  # image and target zoomed alike
        areas.append(_median_whole_area(y))
    assert max(areas) / min(areas) > 2.0  # disks of area ~317 seen from ~1/4 to ~4 times that

    plain = random_crops([image], [labels], 128, seed=0, target="boundary")
    plain_areas = [_median_whole_area(next(plain)[1]) for _ in range(10)]
    assert max(plain_areas) == min(plain_areas)


def test_random_intensity_stays_in_range_and_keeps_grey_grey():
    rng = np.random.default_rng(0)
    grey = np.repeat(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64, 1), 3, -1)
    colour = grey * np.array([0.9, 0.5, 0.7], np.float32)
    inverted = 0
    for _ in range(50):
        out = random_intensity(grey, rng)
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
        assert not np.allclose(out, grey, atol=0.01)
        inverted += out[0, 0, 0] > out[-1, -1, 0]  # the dark corner became the bright one
        tinted = random_intensity(colour, rng)
        ratio = tinted[32, 32] / np.maximum(colour[32, 32], 1e-6)
        assert not np.allclose(ratio, ratio[0], rtol=1e-3)  # stain channels scaled apart
    assert 3 <= inverted <= 20  # about 20% of the crops


def test_contact_pixels_mark_where_nuclei_touch_and_nowhere_else():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 5:20] = 1
    labels[10:30, 20:35] = 2  # touches nucleus 1 along column 20
    labels[10:30, 45:55] = 3  # alone
    contact = contact_pixels(labels, radius=2)
    assert contact[10:30, 18:22].all()  # two pixels either side of the shared edge
    assert not contact[:, :17].any() and not contact[:, 23:].any()
    assert not contact[:8].any() and not contact[32:].any()
    gap = labels.copy()
    gap[:, 20] = 0  # a one-pixel background gap is weighted too
    assert contact_pixels(gap)[10:30, 20].all()
    assert not contact_pixels(np.zeros((8, 8), np.uint16)).any()


def test_crops_with_contact_weights_keep_weights_aligned_through_augmentation():
    labels = np.zeros((64, 64), np.int32)
    labels[8:40, 8:30], labels[8:40, 30:50] = 1, 2
    image = np.repeat((labels > 0)[..., None], 3, -1).astype(np.float32)
    crops = random_crops([image], [labels], 64, seed=0, target="boundary",
                         contact_weight=5.0)
    x, y, w = next(crops)
    assert w.dtype == np.float32 and set(np.unique(w)) == {1.0, 5.0}
    assert np.array_equal(w == 5.0, contact_pixels(labels))
    batch = [np.stack([a] * 8) for a in (x, y, w)]
    images, masks, weights = (np.asarray(t) for t in Augment(seed=3)(*batch))
    symmetries = [lambda a, k=k, t=t: np.rot90(a.T if t else a, k) for k in range(4)
                  for t in (False, True)]
    for image_out, mask_out, weight_out in zip(images, masks, weights):
        assert np.array_equal(image_out[..., 0] > 0.5, mask_out > 0)
        moved = [f for f in symmetries if np.array_equal(f(y), mask_out)]
        assert moved and any(np.array_equal(f(w), weight_out) for f in moved)


def _he_like(size=64, seed=0):
    """A colour crop: purple (haematoxylin) disks on a pink (eosin) background, in [0, 1]."""
    from skimage.color import hed2rgb

    _, labels = make_disks((size, size), count=5, seed=seed)
    hed = np.zeros((size, size, 3))
    hed[..., 1] = 0.15  # eosin everywhere
    hed[..., 0] = np.where(labels > 0, 0.6, 0.02)  # haematoxylin in the nuclei
    return hed2rgb(hed).astype(np.float32), labels


def test_random_stain_changes_the_haematoxylin_of_colour_crops_only():
    from skimage.color import rgb2hed

    rng = np.random.default_rng(0)
    colour, labels = _he_like()
    grey = np.repeat(colour.mean(-1, keepdims=True), 3, -1)
    haematoxylin = []
    for _ in range(40):
        out = random_stain(colour, rng)
        assert out.dtype == np.float32 and out.shape == colour.shape
        assert 0.0 <= out.min() and out.max() <= 1.0
        amount = rgb2hed(out)[..., 0]
        haematoxylin.append(amount[labels > 0].mean())
        assert random_stain(grey, rng) is grey  # no stain to change
    change = np.array(haematoxylin) / np.median(haematoxylin)
    assert change.min() < 0.8 and change.max() > 1.25  # pale and dark nuclei both drawn


def test_render_as_he_draws_grey_nuclei_as_dark_stained_ones_on_pink_tissue():
    image, labels = make_disks((96, 96), count=6)
    grey = np.repeat((image / 255.0).astype(np.float32)[..., None], 3, -1)
    inside, outside = labels > 0, labels == 0
    colours = []
    for seed in range(20):
        out = render_as_he(grey, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == grey.shape
        assert 0.0 < out.min() and out.max() <= 1.0
        assert not np.array_equal(out[..., 0], out[..., 1])  # colour now
        assert out[inside].sum(-1).mean() < out[outside].sum(-1).mean()  # nuclei darker
        background = out[outside].mean(0)
        assert background[1] < background[0] and background[1] < background[2]  # eosin: pink
        colours.append(out[inside].mean(0))
    assert np.ptp(np.array(colours), axis=0).max() > 0.15  # stains differ from crop to crop
    colour = np.stack([grey[..., 0], grey[..., 1] * 0.8, grey[..., 2]], -1)
    assert render_as_he(colour, np.random.default_rng(0)) is colour  # already colour


def test_random_crops_render_about_a_third_of_grey_crops_as_he():
    image, labels = make_disks((128, 128), count=8)
    grey = np.repeat((image / 255.0).astype(np.float32)[..., None], 3, -1)
    crops = random_crops([grey], [labels], 64, seed=0, he_render=True)
    rendered = sum(not np.array_equal(x[..., 0], x[..., 1]) for x, _ in
                   (next(crops) for _ in range(90)))
    assert 15 <= rendered <= 45


def test_random_blur_noise_blurs_or_adds_noise_and_keeps_grey_grey():
    rng = np.random.default_rng(1)
    image, _ = make_disks((64, 64), count=5)
    grey = np.repeat((image / 255.0).astype(np.float32)[..., None], 3, -1)
    smoother = noisier = 0
    edge = lambda x: np.abs(np.diff(x[..., 0], axis=1)).mean()
    for _ in range(60):
        out = random_blur_noise(grey, rng)
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
        smoother += edge(out) < 0.9 * edge(grey)
        noisier += np.abs(out - grey).std() > 0.01 and edge(out) > edge(grey)
    assert 8 <= smoother <= 35 and 8 <= noisier <= 35  # about a third each, independently


def test_data_shares_give_each_folder_its_share_of_the_crops():
    from nucleiseg.training.data import crop_weights

    shapes = [(256, 256)] * 10 + [(512, 512)] * 2
    kinds = ["fluorescence"] * 8 + ["histology"] * 2 + ["histology"] * 2
    sources = [0] * 10 + [1] * 2
    weights = crop_weights(shapes, kinds, 256, sources=sources, shares=(1.0, 3.0))
    assert weights.sum() == pytest.approx(1.0)
    assert weights[10:].sum() == pytest.approx(0.75)  # folder 1: 3 parts of 4
    # within folder 0, the rare kind still drawn more often per image than the common one
    assert weights[8] > weights[0]
    plain = crop_weights(shapes, kinds, 256)
    assert plain[10:].sum() < 0.75


def test_data_shares_are_checked(tmp_path):
    from conftest import make_disks, write_paired

    from nucleiseg.config import TrainConfig
    from nucleiseg.errors import UsageError
    from nucleiseg.training.fit import train

    with pytest.raises(UsageError, match="data_shares"):
        TrainConfig(sampling="crops", data_shares=(1.0, 0.0))
    with pytest.raises(UsageError, match="random crops"):
        TrainConfig(data_shares=(1.0, 1.0))
    folder = write_paired(tmp_path / "a", [(f"img{i}", *make_disks(seed=i)) for i in range(3)])
    config = TrainConfig(sampling="crops", image_size=32, data_shares=(1.0, 1.0))
    with pytest.raises(UsageError, match="2 data shares for 1 --data folders"):
        train(config, [folder], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def he_tile(haematoxylin: dict, labels: np.ndarray) -> np.ndarray:
    """An H&E-like RGB crop: eosin everywhere, each nucleus's haematoxylin amount as given."""
    from skimage.color import hed2rgb

    hed = np.zeros(labels.shape + (3,))
    hed[..., 1] = 0.05
    for nucleus, amount in haematoxylin.items():
        hed[labels == nucleus, 0] = amount
    return hed2rgb(hed).astype(np.float32)


def test_pale_nuclei_are_the_paler_half_of_a_colour_crop_and_weighted_in_its_loss():
    labels = np.zeros((64, 64), np.int32)
    labels[4:16, 4:16], labels[30:42, 30:42], labels[46:58, 4:16], labels[4:16, 46:58] = 1, 2, 3, 4
    image = he_tile({1: 0.25, 2: 0.05, 3: 0.3, 4: 0.08}, labels)
    pale = pale_nuclei(image, labels)
    assert set(np.unique(labels[pale])) == {2, 4} and not pale[labels == 0].any()
    grey = np.repeat(image.mean(-1, keepdims=True), 3, -1)  # no colour, no stain to judge
    assert not pale_nuclei(grey, labels).any()
    assert not pale_nuclei(image, np.where(labels == 1, 1, 0)).any()  # one nucleus: no half
    x, y, w = next(random_crops([image], [labels], 64, seed=0, target="boundary",
                                pale_weight=3.0))
    assert np.array_equal(w == 3.0, pale) and set(np.unique(w)) == {1.0, 3.0}

"""Splitting, array preparation, joint augmentation and the tf.data pipelines."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

from nucleiseg.algorithms.preprocess import normalize_image, resize_image, resize_labels
from nucleiseg.algorithms.targets import (  # noqa: F401  (re-exported)
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    contact_pixels,
    labels_to_classes,
)
from nucleiseg.algorithms.tiling import pad_image
from nucleiseg.model.augment import Augment  # noqa: F401  (re-exported)


def split_names(names, val_fraction: float = 0.3, seed: int = 123, groups=None, clusters=None):
    """Deterministic train/validation split of sample names.

    With `groups` (e.g. image kind per name) each group is split on its own, so a rare kind is
    represented on both sides whenever it has at least two samples. With `clusters` (e.g. the
    patient per name) names of one cluster always land on the same side, so validation is on
    whole held-out patients; a name without a cluster is its own. The result depends only on
    the set of names, the fraction and the seed, never on listing order.
    """
    names = sorted(names)
    groups, clusters = groups or {}, clusters or {}
    by_group = defaultdict(lambda: defaultdict(list))
    for name in names:
        by_group[groups.get(name, "")][clusters.get(name, name)].append(name)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for group in sorted(by_group):
        units = [by_group[group][key] for key in sorted(by_group[group])]
        order = rng.permutation(len(units))
        n_val = int(round(val_fraction * len(units)))
        if len(units) >= 2:
            n_val = min(max(n_val, 1), len(units) - 1)
        val += [name for i in order[:n_val] for name in units[i]]
        train += [name for i in order[n_val:] for name in units[i]]
    return sorted(train), sorted(val)


def name_clusters(names, pattern: str | None) -> dict:
    """{name: cluster} from the first match of the regular expression `pattern` in each name
    (e.g. '^[^_]+' for a patient prefix such as '04' in '04_3'); names it does not match are
    their own cluster. None: every name is its own."""
    if not pattern:
        return {}
    regex = re.compile(pattern)
    found = {name: regex.search(name) for name in names}
    return {name: match.group(0) for name, match in found.items() if match and match.group(0)}


def prepare_arrays(images, labels, image_size: int, target: str = "binary"):
    """Normalise and resize (images bilinear, masks nearest) to image_size x image_size.

    Returns float32 images (N, S, S, 3) and uint8 class masks (N, S, S).
    """
    shape = (image_size, image_size)
    x = np.stack([resize_image(normalize_image(image), shape) for image in images])
    y = np.stack([labels_to_classes(resize_labels(label, shape), target) for label in labels])
    return x, y


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad the first two axes up to at least size x size (image and target alike)."""
    return pad_image(array, size, size)


def crop_weights(shapes, kinds, crop: int, power: float = 0.5, sources=None,
                 shares=None) -> np.ndarray:
    """Sampling probability per image for random crops.

    (crops the image holds)^power x (images of its kind)^-power: large images are seen more
    often, rare kinds much more than their share of the images. On the DSB training data this
    gives fluorescence / histology / bright-field about 53% / 19% / 27% of the crops (by area
    alone: 75% / 8% / 17%). With `sources` (each image's --data folder, from 0) and `shares`
    (one per folder), each folder's images together get that share of the crops, balanced
    within it as above.
    """
    counts = {kind: list(kinds).count(kind) for kind in set(kinds)}
    weights = np.array([(max(1.0, h * w / crop**2) / counts[kind]) ** power
                        for (h, w), kind in zip(shapes, kinds)])
    if shares is not None:
        sources = np.asarray(sources)
        for source, share in enumerate(shares):
            own = sources == source
            if own.any():
                weights[own] *= share / weights[own].sum()
    return weights / weights.sum()


def pale_nuclei(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pixels of the paler half of the nuclei in a colour (H&E) crop: nuclei whose mean
    haematoxylin optical density (skimage's rgb2hed) is under the median of the crop's nuclei.
    All False for a grey crop or one with fewer than two nuclei."""
    from scipy import ndimage
    from skimage.color import rgb2hed

    pale = np.zeros(labels.shape, bool)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) < 2 or image.ndim != 3 or np.ptp(image - image.mean(axis=-1, keepdims=True)) < 1e-3:
        return pale
    haematoxylin = rgb2hed(np.clip(image, 0.0, 1.0))[..., 0]
    means = np.asarray(ndimage.mean(haematoxylin, labels, ids))
    return np.isin(labels, ids[means < np.median(means)])


def random_crops(images, labels, crop: int, seed: int, weights=None, *, target: str = "binary",
                 zoom: float = 1.0, intensity: bool = False, stain: bool = False,
                 blur_noise: bool = False, he_render: bool = False,
                 contact_weight: float = 1.0, pale_weight: float = 1.0):
    """Endless generator of (image crop, class-target crop) at native resolution.

    Crops are cut from the images and their instance `labels`, optionally zoomed by a random
    log-uniform factor in [1/zoom, zoom] (nuclei of other sizes than the training images'),
    then each crop's `target` classes are made from its labels (so boundaries stay one pixel
    wide at any zoom). Appearance changes, in this order: `he_render` (render_as_he),
    `stain` (random_stain), `intensity` (random_intensity), `blur_noise` (random_blur_noise).
    A `contact_weight` or `pale_weight` other than 1 adds a third item, the per-pixel loss
    weight: `contact_weight` on contact_pixels, times `pale_weight` on pale_nuclei (colour
    crops), 1 elsewhere.
    """
    rng = np.random.default_rng(seed)
    log_zoom = math.log(max(zoom, 1.0))
    while True:
        index = rng.choice(len(images), p=weights)
        factor = math.exp(rng.uniform(-log_zoom, log_zoom)) if log_zoom else 1.0
        window = max(1, round(crop / factor))
        image, source = pad_to(images[index], window), pad_to(labels[index], window)
        top = rng.integers(0, image.shape[0] - window + 1)
        left = rng.integers(0, image.shape[1] - window + 1)
        image_crop = image[top:top + window, left:left + window]
        target_crop = source[top:top + window, left:left + window]
        if window != crop:
            image_crop = resize_image(image_crop, (crop, crop))
            target_crop = resize_labels(target_crop, (crop, crop))
        pixel_weights = None
        if contact_weight != 1.0 or pale_weight != 1.0:
            pixel_weights = np.where(contact_pixels(target_crop), np.float32(contact_weight),
                                     np.float32(1.0))
            if pale_weight != 1.0:
                pixel_weights[pale_nuclei(image_crop, target_crop)] *= np.float32(pale_weight)
        target_crop = labels_to_classes(target_crop, target)
        if he_render and rng.random() < HE_RENDER_SHARE:
            image_crop = render_as_he(image_crop, rng)
        if stain:
            image_crop = random_stain(image_crop, rng)
        if intensity:
            image_crop = random_intensity(image_crop, rng)
        if blur_noise:
            image_crop = random_blur_noise(image_crop, rng)
        if pixel_weights is None:
            yield image_crop, target_crop
        else:
            yield image_crop, target_crop, pixel_weights


def random_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random appearance change of a normalised [0, 1] RGB crop, for stains, microscopes and
    exposures the training images lack: per-channel gain (stain colour; colour crops only),
    contrast, brightness and gamma; 20% of the crops also inverted (dark nuclei on a light
    background and back)."""
    colour = not np.array_equal(image[..., 0], image[..., 1])
    out = image * rng.uniform(0.9, 1.1, size=3).astype(np.float32) if colour else image
    out = (out - 0.5) * rng.uniform(0.75, 1.25) + 0.5 + rng.uniform(-0.1, 0.1)
    out = np.clip(out, 0.0, 1.0) ** np.float32(math.exp(rng.uniform(-0.4, 0.4)))
    if rng.random() < 0.2:
        out = 1.0 - out
    return out.astype(np.float32)


# Log-ranges of the random stain-amount factors (haematoxylin, eosin, DAB) and of the shifts:
# haematoxylin down to 0.3x, for the pale nuclei of other labs' H&E (MoNuSeg, docs/results.md).
STAIN_LOG_GAIN_LOW = np.log([0.3, 0.67, 0.82])
STAIN_LOG_GAIN_HIGH = np.log([1.8, 1.5, 1.22])
STAIN_SHIFT = np.array([0.02, 0.02, 0.0])


def is_grey(image: np.ndarray) -> bool:
    """A crop whose three channels are one (a grey image drawn as RGB)."""
    return (np.array_equal(image[..., 0], image[..., 1])
            and np.array_equal(image[..., 0], image[..., 2]))


def random_stain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random stain change of a normalised [0, 1] colour crop in haematoxylin/eosin/DAB space
    (Tellez et al. 2018): each stain amount scaled by a log-uniform factor (haematoxylin
    0.3-1.8x: pale and dark nuclei; eosin 0.67-1.5x) and shifted a little. Grey crops are
    returned unchanged. Applied as the change of the H&E-reconstructed colour, so an unchanged
    stain gives back exactly the input, also where rgb2hed clips."""
    from skimage.color import hed2rgb, rgb2hed

    if is_grey(image):
        return image
    gain = np.exp(rng.uniform(STAIN_LOG_GAIN_LOW, STAIN_LOG_GAIN_HIGH))
    shift = rng.uniform(-STAIN_SHIFT, STAIN_SHIFT)
    hed = rgb2hed(image)
    change = hed2rgb(np.maximum(hed * gain + shift, 0.0)) - hed2rgb(hed)
    return np.clip(image + change, 0.0, 1.0).astype(np.float32)


# Optical densities per unit stain (Ruifrok & Johnston 2001, as in skimage's rgb2hed).
HAEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29])
EOSIN_OD = np.array([0.07, 0.99, 0.11])
HE_RENDER_SHARE = 0.3  # of the grey crops


def render_as_he(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey fluorescence crop (bright nuclei, dark background) drawn as an H&E-stained one:
    haematoxylin where the nuclear stain is, eosin on a textured background, each with a
    randomly perturbed colour (labs' stains and scanners differ) and amount, mixed in optical
    density and brought back to RGB by Beer-Lambert. Colour crops are returned unchanged. The
    DSB's histology is one preparation; its fluorescence images hold far more nuclei of every
    size and density, which this shows to the model as tissue."""
    from scipy import ndimage

    if not is_grey(image):
        return image

    def colour(od):
        vector = np.clip(od + rng.normal(0.0, 0.12, 3), 0.02, None)
        return vector / np.linalg.norm(vector)

    nuclear = np.clip(image[..., 0], 0.0, 1.0) ** rng.uniform(0.6, 1.5)
    haematoxylin = rng.uniform(0.4, 1.6) * nuclear + rng.uniform(0.0, 0.08)
    texture = ndimage.gaussian_filter(rng.normal(size=nuclear.shape), rng.uniform(1.5, 6.0))
    texture /= texture.std() + 1e-6
    eosin = (rng.uniform(0.05, 0.9) * np.clip(1.0 + rng.uniform(0.1, 0.6) * texture, 0.0, None)
             * (1.0 - rng.uniform(0.3, 0.9) * nuclear))
    density = (haematoxylin[..., None] * colour(HAEMATOXYLIN_OD)
               + eosin[..., None] * colour(EOSIN_OD))
    return np.exp(-density).astype(np.float32)


def random_blur_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other optics and detectors: a third of the crops blurred (Gaussian, sigma 0.5-2 px), a
    third given Gaussian noise (sigma 0.01-0.08 of the [0, 1] range), independently."""
    from scipy import ndimage

    out = image
    if rng.random() < 1 / 3:
        sigma = rng.uniform(0.5, 2.0)
        out = ndimage.gaussian_filter(out, sigma=(sigma, sigma, 0), mode="reflect")
    if rng.random() < 1 / 3:
        noise = rng.normal(0.0, rng.uniform(0.01, 0.08), size=out.shape[:2])[..., None]
        colour = not np.array_equal(image[..., 0], image[..., 1])
        if colour:  # independent per channel; grey crops stay grey
            noise = rng.normal(0.0, 1.0, size=out.shape) * noise
        out = out + noise
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def centre_crops(images, targets, crop: int):
    """One fixed crop per image (centre, padded if small): a repeatable validation set."""
    xs, ys = [], []
    for image, target in zip(images, targets):
        image, target = pad_to(image, crop), pad_to(target, crop)
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        xs.append(image[top:top + crop, left:left + crop])
        ys.append(target[top:top + crop, left:left + crop])
    return np.stack(xs).astype(np.float32), np.stack(ys)


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


def make_crop_dataset(images, labels, crop: int, batch_size: int, seed: int,
                      augment: bool = True, weights=None, **crop_options):
    """Random native-resolution crops: generate -> batch -> augment -> prefetch (endless).

    `crop_options` go to random_crops (target, zoom, stain, intensity, blur_noise,
    contact_weight, pale_weight)."""
    import tensorflow as tf

    signature = (tf.TensorSpec((crop, crop, 3), tf.float32), tf.TensorSpec((crop, crop), tf.uint8))
    if (crop_options.get("contact_weight", 1.0) != 1.0
            or crop_options.get("pale_weight", 1.0) != 1.0):  # (image, target, pixel weights)
        signature += (tf.TensorSpec((crop, crop), tf.float32),)
    dataset = tf.data.Dataset.from_generator(
        lambda: random_crops(images, labels, crop, seed, weights, **crop_options),
        output_signature=signature,
    ).batch(batch_size)
    if augment:
        augmenter = Augment(seed=seed)
        dataset = dataset.map(lambda *batch: augmenter(*batch), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_val_dataset(images, masks, batch_size: int):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch_size)
    return dataset.cache().prefetch(tf.data.AUTOTUNE)

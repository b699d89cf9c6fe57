"""Property-based fuzzing: only documented errors (NucleisegError) escape, and results have
the promised shape, dtype and range. Hypothesis picks shapes, dtypes and styles; pixels come
from a drawn numpy seed, so examples stay cheap."""

import io
import re
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nucleiseg.algorithms.instances import (
    InstanceOptions,
    labels_from_probabilities,
    measure_nuclei,
)
from nucleiseg.algorithms.metrics import instance_ious, match_instances, pixel_counts
from nucleiseg.algorithms.preprocess import exact_percentiles, normalize_image, to_rgb
from nucleiseg.algorithms.targets import labels_to_classes
from nucleiseg.algorithms.tiling import gaussian_weights, tile_layout, tile_starts
from nucleiseg.errors import DataError
from nucleiseg.io.images import merge_instance_masks, read_image, read_label_mask

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEEDS = st.integers(0, 2**32 - 1)
DTYPES = [np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int32]


def pixels(rng, shape, dtype, style):
    """Random pixels: a few label-like values, the full range, signed, noise or non-finite."""
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if style == "labels":
        return rng.integers(0, 6, shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min if style == "signed" else 0, info.max, shape, dtype, True)
    values = rng.normal(0, 10.0 ** rng.integers(-3, 30), shape).astype(dtype)
    if style == "nonfinite" and values.size:
        values.flat[rng.integers(0, values.size, 3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
    return values


def outcome(name, read, path):
    """read(path), or None after checking that its DataError names the file."""
    try:
        result = read(path)
    except DataError as error:
        assert path.name in str(error)
        event(f"{name}: " + re.sub(r"\d+", "N", str(error).split(": ")[1][:22]))
        return None
    event(f"{name}: read")
    return result


def encode(array, suffix):
    """Bytes of `array` saved as `suffix`, cast to what that format can hold; None if it can't."""
    try:
        if suffix in (".tif", ".tiff"):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, array)
            return buffer.getvalue()
        if suffix in (".jpg", ".jpeg"):  # 8-bit grey or RGB, one frame
            array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
            if not (array.ndim == 3 and array.shape[-1] == 3):
                array = array.reshape(-1, array.shape[-1])
        elif array.dtype not in (np.uint8, np.uint16, np.bool_):
            array = np.clip(np.nan_to_num(array), 0, 65535).astype(np.uint16)
        return iio.imwrite("<bytes>", array, extension=suffix)
    except Exception:
        return None


@st.composite
def image_files(draw):
    """(suffix, bytes): empty, garbage, or a valid image of random layout, maybe truncated."""
    suffix = draw(st.sampled_from([".png", ".tif", ".tiff", ".jpg", ".jpeg"]))
    kind = draw(st.sampled_from(["valid", "valid", "valid", "garbage", "empty"]))
    if kind != "valid":
        return suffix, draw(st.binary(min_size=1, max_size=300)) if kind == "garbage" else b""
    h, w, c, pages = (draw(st.integers(1, n)) for n in (20, 20, 5, 3))
    layout = draw(st.sampled_from(["2d", "hwc", "chw", "stack", "stack4"]))
    shape = {"2d": (h, w), "hwc": (h, w, c), "chw": (c, h, w), "stack": (pages, h, w),
             "stack4": (pages, h, w, c)}[layout]
    dtype = draw(st.sampled_from(DTYPES))
    style = draw(st.sampled_from(["labels", "full", "signed", "nonfinite"]))
    rng = np.random.default_rng(draw(SEEDS))
    content = encode(pixels(rng, shape, dtype, style), suffix)
    if content is None:
        return suffix, draw(st.binary(min_size=1, max_size=300))
    cut = draw(st.one_of(st.none(), st.floats(0, 1)))
    return suffix, content if cut is None else content[: int(len(content) * cut)]


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ, max_examples=60)
@given(image_files())
def test_readers_return_the_promised_arrays_or_a_data_error_naming_the_file(case):
    suffix, content = case
    with tempfile.TemporaryDirectory() as folder:
        path, shape = Path(folder) / f"fuzz sample{suffix}", (4, 4)
        path.write_bytes(content)
        image = outcome("read_image", read_image, path)
        if image is not None:
            assert image.ndim == 3 and image.shape[-1] in (1, 3, 4) and min(image.shape[:2]) >= 2
            assert image.dtype.kind in "uif" and np.isfinite(image).all()
            shape = image.shape[:2]
        labels = outcome("read_label_mask", read_label_mask, path)
        if labels is not None:
            assert labels.ndim == 2 and labels.dtype.kind in "iu" and labels.min() >= 0
        merged = outcome("merge", lambda p: merge_instance_masks((p,), shape), path)
        if merged is not None:
            assert merged.shape == shape and merged.dtype == np.int32
            assert set(np.unique(merged)) <= {0, 1}


@pytest.mark.parametrize("shape", [(0, 0), (0, 1), (1, 0), (0, 0, 1), (1, 0, 0), (0, 2), (2, 0),
                                   (0, 0, 3), (1, 0, 3)])
@pytest.mark.filterwarnings("ignore")
def test_zero_pixel_tiff_masks_are_data_errors(shape):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "empty.tif"
        tifffile.imwrite(path, np.zeros(shape, np.uint8))
        for read in (read_image, read_label_mask, lambda p: merge_instance_masks((p,), (2, 2))):
            with pytest.raises(DataError, match="empty.tif"):
                read(path)


@pytest.mark.parametrize("values", [np.array([[0, 1, 2**31 + 5]], np.float64),
                                    np.array([[0, 1, 2**31]], np.uint32),
                                    np.array([[0, 1, 2**32 + 1]], np.int64)])
@pytest.mark.filterwarnings("ignore")
def test_label_values_beyond_int32_are_refused_or_kept_distinct(tmp_path, values):
    tifffile.imwrite(tmp_path / "big.tif", values)
    try:
        labels = read_label_mask(tmp_path / "big.tif")
    except DataError:
        return
    assert labels.min() >= 0 and len(np.unique(labels)) == 3


@st.composite
def raw_images(draw):
    """H x W (x 1, 3, 4), H or W maybe 0, any pixel type; floats up to 2**100."""
    h, w = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    shape = draw(st.sampled_from([(h, w), (h, w, 1), (h, w, 3), (h, w, 4)]))
    dtype = draw(st.sampled_from(DTYPES + [np.int64, np.float16]))
    elements = st.one_of(st.floats(-2.0**100, 2.0**100, width=32),
                         st.sampled_from([np.nan, np.inf, -np.inf]))
    return draw(hnp.arrays(dtype, shape, elements=elements if dtype in (np.float32, np.float64)
                           else None))


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(raw_images())
def test_normalize_image_gives_finite_float32_rgb_in_unit_range(image):
    before = image.copy()
    out = normalize_image(image)
    assert out.shape == (*image.shape[:2], 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min(initial=0) >= 0 and out.max(initial=1) <= 1
    np.testing.assert_array_equal(image, before)  # the input is not modified
    values = to_rgb(image).astype(np.float32).ravel()  # a brighter pixel never comes out darker
    finite = np.isfinite(values)
    assert (np.diff(out.ravel()[finite][np.argsort(values[finite])]) >= 0).all()


@pytest.mark.parametrize("image", [np.array([[-3e38, -3e38], [3e38, 3e38]], np.float32),
                                   np.array([[0.0, 1e300], [5.0, 0.0]])])
@pytest.mark.filterwarnings("ignore")
def test_normalize_image_of_extreme_floats_keeps_bright_pixels_bright(image):
    out = normalize_image(image)
    assert np.isfinite(out).all() and out[image == image.max()].min() == 1.0


@st.composite
def label_images(draw, shape=None, max_id=2**31 - 1, count=6):
    """Blocky label images (so objects overlap) with non-consecutive, possibly huge values."""
    h, w = shape or (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    ids = draw(st.lists(st.integers(1, max_id), max_size=count, unique=True))
    palette = np.array([0, *ids], draw(st.sampled_from([np.int32, np.int64, np.uint32])))
    rng, block = np.random.default_rng(draw(SEEDS)), draw(st.integers(1, 24))
    small = rng.integers(0, len(palette), (h // block + 1, w // block + 1))
    return palette[small.repeat(block, 0).repeat(block, 1)[:h, :w]]


@st.composite
def label_pairs(draw):
    true = draw(label_images())
    style = draw(st.sampled_from(["same", "relabelled", "perturbed", "independent"]))
    if style == "independent":
        return true, draw(label_images(shape=true.shape)), style
    pred, ids = true.copy(), np.unique(true)
    if style == "relabelled":  # the same nuclei under other (non-zero, distinct) numbers
        new = draw(st.lists(st.integers(1, 2**31 - 1), min_size=len(ids), max_size=len(ids),
                            unique=True))
        for old, value in zip(ids[ids > 0], new):
            pred[true == old] = value
    elif style == "perturbed":
        rng = np.random.default_rng(draw(SEEDS))
        flip = rng.random(true.shape) < draw(st.floats(0, 0.5))
        pred[flip] = rng.choice(ids, flip.sum())
    return true, pred, style


def brute_force_ious(true, pred):
    true_ids, pred_ids = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    return np.array([[np.sum((true == a) & (pred == b)) / np.sum((true == a) | (pred == b))
                      for b in pred_ids] for a in true_ids]).reshape(len(true_ids), len(pred_ids))


@FUZZ
@given(label_pairs())
def test_metrics_are_bounded_consistent_and_match_a_brute_force_count(pair):
    true, pred, style = pair
    counts = pixel_counts(true, pred)
    assert (counts.tp + counts.fn, counts.tp + counts.fp, counts.tp + counts.fp + counts.fn
            + counts.tn) == (np.count_nonzero(true), np.count_nonzero(pred), true.size)
    assert all(0 <= v <= 1 for v in (counts.accuracy, counts.foreground_iou, counts.dice))
    expected = brute_force_ious(true, pred)
    np.testing.assert_allclose(instance_ious(true, pred), expected)
    np.testing.assert_allclose(instance_ious(pred, true), expected.T)
    scores = match_instances(true, pred)
    n_true, n_pred = expected.shape
    for t, tp, fp, fn in zip(scores.thresholds, scores.tp, scores.fp, scores.fn):
        assert tp == np.count_nonzero((expected > t).any(axis=1)) and min(fp, fn) >= 0
        assert tp + fn == n_true and tp + fp == n_pred
    assert list(scores.tp) == sorted(scores.tp, reverse=True)
    assert match_instances(pred, true).tp == scores.tp
    assert all(0 <= v <= 1 for v in (*scores.average_precision, *scores.f1, scores.dsb_score))
    if style in ("same", "relabelled"):  # the same objects, whatever their label values
        assert scores.dsb_score == 1.0 and scores.tp[-1] == n_true


@FUZZ
@given(st.integers(1, 48), st.integers(1, 48), st.sampled_from([2, 3]),
       st.sampled_from(["blobs", "noise", "zeros", "ones"]), SEEDS, st.booleans(),
       st.builds(InstanceOptions, st.floats(0.05, 0.95), st.floats(0.05, 0.95),
                 st.integers(0, 30), st.booleans(),
                 st.lists(st.floats(0.05, 0.95), max_size=3), st.integers(1, 40),
                 st.floats(0.0, 1.0)))
def test_labels_from_probabilities_numbers_nuclei_consecutively(h, w, classes, style, seed,
                                                                as_uint8, options):
    rng = np.random.default_rng(seed)
    if style in ("zeros", "ones"):
        probabilities = np.full((h, w, classes), float(style == "ones"), np.float32)
    else:
        cell = 6 if style == "blobs" else 1
        logits = rng.normal(0, 3, (h // cell + 1, w // cell + 1, classes))
        logits = logits.repeat(cell, 0).repeat(cell, 1)[:h, :w]
        probabilities = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    if as_uint8:  # as quantise_probabilities gives them
        probabilities = np.round(probabilities * 255).astype(np.uint8)
    labels = labels_from_probabilities(probabilities, options)
    assert labels.shape == (h, w) and labels.dtype == np.int32 and labels.min() >= 0
    areas = np.bincount(labels.ravel())[1:]
    assert (areas > 0).all() and (areas >= options.min_size).all()  # 1..N, none too small
    if not options.fill_holes:  # nucleus pixels are foreground, up to 1/255 (quantisation)
        background = probabilities[..., 0][labels > 0] / (255 if as_uint8 else 1)
        assert (1 - background >= options.foreground_threshold - 1 / 255).all()


@FUZZ
@given(st.integers(1, 24).flatmap(lambda h: st.integers(1, 24).flatmap(
    lambda w: label_images(shape=(h, w), max_id=10**5, count=8))), SEEDS,
    st.sampled_from([(), (1,), (3,), (4,)]), st.sampled_from([np.uint8, np.float32]))
def test_measure_nuclei_gives_one_plausible_row_per_label(labels, seed, channels, dtype):
    labels = labels.astype(np.int32)
    image = (np.random.default_rng(seed).random((*labels.shape, *channels)) * 255).astype(dtype)
    rows = measure_nuclei(labels, image)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    assert [r["label"] for r in rows] == list(ids) and [r["area"] for r in rows] == list(areas)
    for row in rows:
        assert 0 <= row["bbox_min_y"] <= row["centroid_y"] < row["bbox_max_y"] <= labels.shape[0]
        assert 0 <= row["bbox_min_x"] <= row["centroid_x"] < row["bbox_max_x"] <= labels.shape[1]
        assert 0 <= row["eccentricity"] <= 1 + 1e-6 and 0 <= row["mean_intensity"] <= 255
    for target, top in (("binary", 1), ("boundary", 2)):
        classes = labels_to_classes(labels, target)
        assert np.array_equal(classes > 0, labels > 0) and classes.max(initial=0) <= top


@settings(FUZZ, max_examples=200)
@given(st.integers(1, 5000), st.integers(1, 600).flatmap(
    lambda tile: st.tuples(st.just(tile), st.integers(0, tile - 1))))
def test_tiles_are_sorted_in_range_flush_and_overlap_enough(length, tile_overlap):
    tile, overlap = tile_overlap
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
    else:
        assert starts[-1] + tile == length and all(s + tile <= length for s in starts)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@settings(FUZZ, max_examples=200)
@given(st.integers(1, 5000), st.integers(1, 20).flatmap(
    lambda tile: st.tuples(st.just(32 * tile), st.integers(0, 32 * tile - 1))))
def test_fitted_tiles_cover_the_image_overlap_enough_and_are_fewest(length, tile_overlap):
    tile, overlap = tile_overlap
    size, starts = tile_layout(length, tile, overlap)
    assert size % 32 == 0 and size <= tile and starts[0] == 0
    if len(starts) == 1:
        assert length <= size < length + 32
    else:
        assert starts[-1] + size == length
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))
        assert len(starts) == max(2, -(-(length - overlap) // (tile - overlap)))
        # one multiple of 32 shorter would no longer cover the image with that overlap
        shorter = size - 32
        assert len(starts) * shorter - (len(starts) - 1) * overlap < length


@settings(FUZZ, max_examples=60)
@given(st.integers(1, 300), st.floats(0.01, 2), st.floats(1e-6, 0.5))
def test_gaussian_weights_are_positive_bounded_and_symmetric(tile, sigma_fraction, floor):
    weights = gaussian_weights(tile, sigma_fraction, floor)
    assert weights.shape == (tile, tile) and weights.dtype == np.float32
    assert weights.min() >= np.float32(floor) > 0 and weights.max() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1, ::-1], rtol=1e-6)
    np.testing.assert_allclose(weights, weights.T, rtol=1e-6)


@settings(FUZZ, max_examples=100)
@given(st.sampled_from([np.uint8, np.uint16]), st.integers(1, 3000), st.integers(0, 2**32 - 1),
       st.lists(st.floats(0, 100), min_size=1, max_size=4))
def test_histogram_percentiles_are_numpys(dtype, count, seed, qs):
    """8/16-bit percentiles from the histogram equal np.percentile's linear interpolation."""
    rng = np.random.default_rng(seed)
    top = int(rng.integers(1, np.iinfo(dtype).max + 1))
    values = rng.integers(0, top, count, endpoint=True).astype(dtype)
    np.testing.assert_allclose(exact_percentiles(values, qs),
                               np.percentile(values.astype(np.float64), qs), rtol=1e-9)


@settings(FUZZ, max_examples=60)
@given(st.integers(1, 90), st.integers(1, 90), st.integers(1, 90), st.integers(1, 90),
       st.sampled_from([(), (1,), (3,)]), st.integers(0, 2**32 - 1))
def test_resize_is_skimages_bilinear_resize(height, width, out_h, out_w, channels, seed):
    """The sparse-matrix resize gives skimage's order-1 resize (anti-aliased when shrinking,
    reflect mode), to float32 precision, for any sizes either way."""
    from skimage.transform import resize

    from nucleiseg.algorithms.preprocess import resize_image

    image = np.random.default_rng(seed).random((height, width, *channels)).astype(np.float32)
    shrink = out_h < height or out_w < width
    expected = resize(image, (out_h, out_w, *channels), order=1, anti_aliasing=shrink,
                      preserve_range=True, mode="reflect")
    got = resize_image(image, (out_h, out_w))
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


@FUZZ
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5),
                  elements=st.floats(-80, 80, width=32)))
def test_softmax_equals_the_textbook_formula_on_any_logits(logits):
    from nucleiseg.inference.predict import softmax

    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    expected = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    found = softmax(logits)
    assert found.dtype == np.float32 and found.shape == logits.shape
    np.testing.assert_allclose(found, expected, atol=1e-6)

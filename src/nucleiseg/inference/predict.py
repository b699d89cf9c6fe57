"""Prediction: normalise, predict class probabilities at the image's own size (tiles or a
resize, by how the model was trained), separate the nuclei, write the outputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from nucleiseg.algorithms.instances import (
    InstanceOptions,
    labels_from_probabilities,
    quantise_probabilities,
)
from nucleiseg.algorithms.preprocess import (
    apply_intensity_range,
    intensity_range,
    normalize_image,
    resize_image,
)
from nucleiseg.algorithms.stain import StainMatch, StainReference, stain_match
from nucleiseg.errors import UsageError


def create_mask(logits: np.ndarray) -> np.ndarray:
    """Per-pixel class = argmax over the last (class) axis (the original's `create_mask`)."""
    return np.argmax(logits, axis=-1).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last (class) axis, float32, with as few temporaries as possible. The
    few classes are combined plane by plane: numpy's reductions over a last axis of 2-3 are
    3x slower than that (0.16 against 0.05 s for 4 tiles of 512²)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    classes = out.shape[-1]
    largest = out[..., 0].copy()
    for k in range(1, classes):
        np.maximum(largest, out[..., k], out=largest)
    out -= largest[..., None]
    np.exp(out, out=out)
    total = largest  # reused
    np.copyto(total, out[..., 0])
    for k in range(1, classes):
        total += out[..., k]
    out *= np.reciprocal(total, out=total)[..., None]
    return out


def predict_logits(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Logits for a stack of model-ready images (N, S, S, 3), in inference mode."""
    outputs = [
        np.asarray(model(images[start:start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How to predict: tile size and overlap (native-resolution models), input scale, TTA.

    `diameter` decides the scale per image: None uses `scale` as given; "auto" estimates the
    image's typical nucleus diameter and resizes it to `training_diameter` (the nucleus size
    in the model's record: nucleiseg.algorithms.scale); a number is the diameter in pixels, known.
    `stain_reference`: colour images are matched to this stain first (the model's record:
    nucleiseg.algorithms.stain; None: as they are); `stain`: the match of the image at hand,
    once decided (a huge image's blocks all use its one match). `kind`: the image's kind
    (preprocess.image_kind), once decided, for the engine that runs it (Engine.colour: a huge
    image's blocks all run on its window's). `colour_tta`: on the bundled models (an engine
    with Engine.colour), colour (H&E) images average at least this many views (TTA); a huge
    image read block by block is left at `tta` (blockwise.fix_scale), for speed.
    """

    tile: int = 512
    overlap: int = 64
    scale: float = 1.0
    tta: int = 1  # 1 (none), 4 (flips) or 8 (flips and 90-degree rotations)
    # H&E tiles on the bundled models: 4 flips gave +0.04 AP@0.5 on TNBC and MoNuSeg for 1.3x
    # the time (docs/results.md, Test-time augmentation)
    colour_tta: int = 4
    batch_size: int = 1  # tiles per model call: larger is no faster on CPU, and needs more memory
    diameter: float | str | None = None
    training_diameter: float | None = None
    stain_reference: StainReference | None = None
    stain: StainMatch | None = None
    kind: str | None = None

    def __post_init__(self):
        if self.diameter is not None and self.training_diameter is None:
            raise UsageError("--diameter needs the nucleus size the model was trained on, and "
                             "this model's record has none; pass --scale instead")


def with_colour_tta(options: PredictOptions, kind: str) -> PredictOptions:
    """The options an image of `kind` runs with on the bundled models: colour (H&E) images
    with at least `options.colour_tta` TTA views."""
    if kind == "histology" and options.colour_tta > options.tta:
        return dataclasses.replace(options, tta=options.colour_tta)
    return options


def parse_diameter(text: str, blank: bool = False) -> float | str | None:
    """A diameter as written (predict --diameter, the napari widget's field): "auto" or a
    positive number of pixels; with `blank`, "" or "none" too (None: use the scale).
    ValueError naming what is wrong."""
    text = text.strip().lower()
    if blank and text in ("", "none"):
        return None
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ValueError(f"diameter: 'auto' or a positive number of pixels, not {text!r}")
    return value


def options_for(record: dict | None, stain: bool = True, **values) -> PredictOptions:
    """PredictOptions with the model's training nucleus size and stain reference from its
    record; `diameter` defaults to "auto" when the record has that size, else to None (fixed
    `scale`); `stain`: False leaves colour images as they are."""
    training = ((record or {}).get("nucleus_size") or {}).get("median_diameter")
    values.setdefault("diameter", "auto" if training else None)
    if stain:
        values.setdefault("stain_reference", StainReference.from_record(record))
    return PredictOptions(**values, training_diameter=training)


def probability_function(model, tta: int = 1):
    """(N, t, t, 3) normalised tiles -> (N, t, t, C) softmax probabilities, inference mode.
    `model`: a Keras model or an Engine (nucleiseg.inference.engines)."""
    from nucleiseg.algorithms.tiling import with_test_time_augmentation
    from nucleiseg.inference.engines import as_engine

    engine = as_engine(model)

    def predict_batch(tiles):
        return softmax(np.asarray(engine.predict_logits(tiles), dtype=np.float32))

    return predict_batch if tta == 1 else with_test_time_augmentation(predict_batch, tta)


def predict_probabilities(model, image: np.ndarray, config: dict,
                          options: PredictOptions | None = None,
                          intensity: tuple[float, float] | None = None) -> np.ndarray:
    """Class probabilities (H, W, C) at the image's own size.

    A model trained on resized whole images ('resize' sampling) sees the image resized to its
    training size; a model trained on native-resolution crops predicts in overlapping tiles.
    `options.scale` resizes the input first (e.g. 0.5 for nuclei twice the training size).
    `intensity`: the intensity_range to normalise with (a block of a huge image: the whole
    image's), else the image's own.
    """
    from nucleiseg.algorithms.tiling import predict_tiled
    from nucleiseg.inference.engines import as_engine

    options = options or PredictOptions()
    predict_batch = probability_function(model, options.tta)
    if options.stain is not None:
        image = options.stain.apply(image)
    normalised = (normalize_image(image) if intensity is None
                  else apply_intensity_range(image, *intensity))
    native_shape = normalised.shape[:2]
    if options.scale != 1.0:
        shape = tuple(max(1, round(n * options.scale)) for n in native_shape)
        normalised = resize_image(normalised, shape)
    if config.get("sampling", "resize") == "resize":
        size = int(config["image_size"])
        small = resize_image(normalised, (size, size))[None]
        probabilities = resize_image(predict_batch(small)[0], normalised.shape[:2])
    else:
        num_classes = as_engine(model).num_classes
        probabilities = predict_tiled(predict_batch, normalised, num_classes, options.tile,
                                      options.overlap, options.batch_size)
    if options.scale != 1.0:
        probabilities = resize_image(probabilities, native_shape)
    return probabilities


def predict_quantised(model, image: np.ndarray, config: dict,
                      options: PredictOptions | None = None,
                      intensity: tuple[float, float] | None = None) -> np.ndarray:
    """predict_probabilities as uint8 (0..255), in bounded memory for native-resolution models:
    tiles are normalised one by one with the image's intensity range, and the blended
    probabilities are stored quantised. What `predict` and `segment_image` use. `intensity`:
    the image's intensity_range, when the caller has it already."""
    from nucleiseg.algorithms.tiling import predict_tiled
    from nucleiseg.inference.engines import as_engine

    model = as_engine(model)
    options = options or PredictOptions()
    if config.get("sampling", "resize") == "resize" or options.scale != 1.0:
        return quantise_probabilities(predict_probabilities(model, image, config, options,
                                                            intensity))
    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    stain = options.stain
    low, high = intensity if intensity is not None else (
        intensity_range(image) if stain is None else matched_intensity_range(image, stain))
    return predict_tiled(probability_function(model, options.tta), image,
                         model.num_classes, options.tile, options.overlap,
                         options.batch_size,
                         prepare=lambda crop: apply_intensity_range(
                             crop if stain is None else stain.apply(crop), low, high),
                         dtype=np.uint8)


def matched_intensity_range(image: np.ndarray, stain: StainMatch) -> tuple[float, float]:
    """intensity_range of the image after its stain match (on the same regular subsample
    intensity_range takes, so a huge image needs no matched copy)."""
    from nucleiseg.algorithms.preprocess import EXACT_PIXELS

    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / EXACT_PIXELS)))
    return intensity_range(stain.apply(np.asarray(image)[::step, ::step]))


def matched(image: np.ndarray, options: PredictOptions, intensity):
    """(image, options, intensity) with the image's stain matched once, for every pass: by
    `options.stain` when decided (a huge image's block, with the matched image's range as
    `intensity`), else by the image's own match to `options.stain_reference` (colour images;
    then `intensity` is the matched image's range, not the caller's)."""
    stain = options.stain
    decided_here = stain is None
    if decided_here:
        stain = stain_match(image, options.stain_reference)
    if stain is None:
        return image, options, intensity
    image = stain.apply(image)
    return (image, dataclasses.replace(options, stain=None, stain_reference=None),
            intensity_range(image) if decided_here else intensity)


def with_stain(image: np.ndarray, options: PredictOptions, intensity,
               pixels: int | None = None):
    """(options, intensity) for `image`: with its stain match decided, when the options have
    a reference and the image has colour and no match yet, and then the intensity range of
    the matched image (the caller's is of the image as it is). `pixels`: what the match will
    be applied to, when more than `image` (a huge image's window)."""
    if options.stain is not None or options.stain_reference is None:
        return options, intensity
    stain = stain_match(image, options.stain_reference, pixels)
    if stain is None:
        return options, intensity
    return (dataclasses.replace(options, stain=stain),
            matched_intensity_range(np.asarray(image), stain))


def segment_image(model, image: np.ndarray, config: dict,
                  options: PredictOptions | None = None,
                  instance_options: InstanceOptions | None = None,
                  intensity: tuple[float, float] | None = None) -> np.ndarray:
    """Raw image -> int32 label image of separated nuclei (0 = background)."""
    return segment_checked(model, image, config, options, instance_options, intensity)[0]


MAX_SCALED_PIXELS = 1 << 26  # an upscaled image is kept under 64 MP (memory)


def upscale_limit(pixels: int, max_scaled_pixels: int = MAX_SCALED_PIXELS) -> float:
    """The most an image of `pixels` pixels is upscaled: to at most `max_scaled_pixels`
    pixels, but never less than 1 (an image already larger is not shrunk for it)."""
    return max(1.0, math.sqrt(max_scaled_pixels / pixels))


def segment_checked(model, image: np.ndarray, config: dict,
                    options: PredictOptions | None = None,
                    instance_options: InstanceOptions | None = None,
                    intensity: tuple[float, float] | None = None, quantised: bool = True,
                    max_scaled_pixels: int = MAX_SCALED_PIXELS):
    """Segment at the scale `options` asks for -> (labels, probabilities, ImageCheck).

    With `options.diameter` "auto", the image is first segmented as it is; if its typical
    nucleus diameter is not within the tolerances of the training size (scale_for), it is
    resized to that size, predicted again and checked again (at most twice). Probabilities
    come back at the image's own size and are separated there, with the size thresholds tuned
    at the training size rescaled to match. On images already at the right scale the estimate
    costs one median.
    `quantised`: uint8 probabilities (bounded memory, as predict uses) or float (evaluate).
    `max_scaled_pixels`: the image is upscaled to at most this many pixels (upscale_limit).
    """
    from nucleiseg.algorithms.preprocess import fluorescence_grey, sampled_kind
    from nucleiseg.algorithms.scale import (
        SCALE_LIMITS,
        SCALE_TOLERANCE,
        ImageCheck,
        confidence_figures,
        guarded_scale,
        is_unsure,
        scaled_sizes,
        typical_diameter,
        warning_for,
    )
    from nucleiseg.inference.engines import as_engine

    options, instance_options = options or PredictOptions(), instance_options or InstanceOptions()
    model = as_engine(model)
    routed = model.colour is not None
    if routed or instance_options.by_kind:  # judged once, used by both
        kind = options.kind or sampled_kind(image)
        if routed and kind == "fluorescence":  # the bundled models: grey on the general one,
            image = fluorescence_grey(image)  # colour (H&E) on the H&E one, with TTA
        if routed:
            options = with_colour_tta(options, kind)
        model, instance_options = model.for_kind(kind), instance_options.for_kind(kind)
    image, options, intensity = matched(image, options, intensity)
    most = upscale_limit(image.shape[0] * image.shape[1], max_scaled_pixels)

    def run(scale: float):
        at_scale = dataclasses.replace(options, scale=scale)
        probabilities = (predict_quantised(model, image, config, at_scale, intensity) if quantised
                         else predict_probabilities(model, image, config, at_scale,
                                                    None if options.stain is None else intensity))
        sizes = scaled_sizes({"min_size": instance_options.min_size,
                              "min_split_size": instance_options.min_split_size}, scale)
        return probabilities, labels_from_probabilities(
            probabilities, dataclasses.replace(instance_options, **sizes))

    training = options.training_diameter
    if options.diameter is None:
        scale = options.scale
    elif options.diameter == "auto":
        scale = 1.0
    else:
        scale = float(np.clip(training / float(options.diameter), *SCALE_LIMITS))
    scale = min(scale, most)
    probabilities, labels = run(scale)
    diameter, count = typical_diameter(labels)
    confidence, uncertain = confidence_figures(quantise_probabilities(probabilities))
    guard_note, unsure = "", False
    if options.diameter == "auto":
        # an unsure pass (unknown stain, fragments) is weak evidence of the size: its
        # upscaling is limited; a sure pass at the scale reached decides on (tiny nuclei)
        unsure = pass_unsure = is_unsure(confidence, uncertain)
        for _ in range(2):
            probe = labels
            if diameter is None:  # maybe nuclei under min_size at this scale: look again
                probe = labels_from_probabilities(probabilities, dataclasses.replace(
                    instance_options, min_size=1, min_confidence=0.0, split_levels=()))
            wanted, _, guard_note = guarded_scale(probe, training, pass_unsure, most)
            if abs(math.log(wanted / scale)) < math.log(SCALE_TOLERANCE):  # settled
                break
            scale = wanted
            probabilities, labels = run(scale)
            diameter, count = typical_diameter(labels)
            confidence, uncertain = confidence_figures(quantise_probabilities(probabilities))
            pass_unsure = is_unsure(confidence, uncertain)
            unsure = unsure or pass_unsure
    check = ImageCheck(diameter, scale, confidence, uncertain, unsure=unsure)
    warning = "; ".join(filter(None, [warning_for(check, training, int(labels.max())),
                                      guard_note]))
    if (options.diameter != "auto" and scale >= most > 1.0 and training and diameter
            and training / diameter > scale):  # (auto: guarded_scale's note says so)
        warning = "; ".join(filter(None, [warning, "upscaling limited to keep memory bounded"]))
    return labels, probabilities, dataclasses.replace(check, warning=warning)

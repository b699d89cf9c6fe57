"""A model with its options bound once (`Segmenter`), and the package's small public API
(`nucleiseg.segment`, `nucleiseg.measure`, `nucleiseg.Segmenter`; see docs/api.md).

`predict`, the napari widget and Dask workers all segment through a Segmenter: an image read
whole with `segmenter(image)` (segment_checked: tiles, the nucleus size checked and the image
rescaled for it), a huge one block by block with `segmenter.blocks(image)`
(nucleiseg.inference.blockwise).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.instances import (
    InstanceOptions,
    in_micrometres,
    instance_options_from,
    measure_nuclei,
)
from nucleiseg.inference.blockwise import BlockRun, segment_blocks
from nucleiseg.inference.engines import Engine, as_engine, load_engine
from nucleiseg.inference.predict import PredictOptions, options_for, segment_checked
from nucleiseg.io.microscopy import ReadOptions
from nucleiseg.io.wholeslide import BLOCKWISE_PIXELS

DEFAULT = object()  # "the model's own": its recorded nucleus size decides --diameter auto


@dataclasses.dataclass(frozen=True)
class Segmenter:
    """A model and how to use it, bound once; call it per image.

    `engine`: what runs the model (nucleiseg.inference.engines; a Keras model is wrapped);
    `record`: the model's record (its training configuration and nucleus size); `options`:
    tiles, scale, diameter and test-time augmentation; `instance_options`: how nuclei are
    separated (default: the model's tuned values); `read_options`: how files are read (the
    nuclear channel, the planes of a stack, the pixel size; `predict` only);
    `blockwise_pixels`: a tiled TIFF with more pixels is segmented block by block.
    """

    engine: Engine | None
    record: dict
    options: PredictOptions = PredictOptions()
    instance_options: InstanceOptions = InstanceOptions()
    read_options: ReadOptions | None = None
    blockwise_pixels: int = BLOCKWISE_PIXELS

    @classmethod
    def load(cls, model: str | Path | None = None, *, engine: str = "auto",
             diameter=DEFAULT, threads: int | None = None, **options) -> Segmenter:
        """The model file `model` (None: the bundled pretrained model) on `engine` ("auto":
        its fastest up-to-date export; see `nucleiseg predict --engine`), with ONNX Runtime
        and TFLite on `threads` threads (None: every core this process may use).
        `diameter`: "auto" (estimated per image), a number of pixels, or None (the image as
        it is, or resized by `scale`); default: "auto" when the model records its training
        nucleus size. Other keywords: PredictOptions' (tile, overlap, scale, tta,
        batch_size), InstanceOptions' (min_size, foreground_threshold, ...), read_options
        and blockwise_pixels."""
        opened, record = load_engine(None if model is None else Path(model), engine,
                                     threads=threads)
        return cls.of(opened, record, diameter=diameter, **options)

    @classmethod
    def of(cls, model, record: dict, *, diameter=DEFAULT, read_options=None,
           blockwise_pixels: int = BLOCKWISE_PIXELS, **options) -> Segmenter:
        """A Segmenter for a model already loaded (a Keras model or an Engine) and its
        record; keywords as for `load`."""
        fields = {f.name for f in dataclasses.fields(PredictOptions)}
        predict = {key: options.pop(key) for key in list(options) if key in fields}
        if diameter is not DEFAULT:
            predict["diameter"] = diameter
        return cls(as_engine(model), record, options_for(record, **predict),
                   instance_options_from(record, **options), read_options, blockwise_pixels)

    @property
    def config(self) -> dict:
        """The model's training configuration (how it predicts: tiles or a resize)."""
        return self.record["config"]

    def checked(self, image: np.ndarray, intensity: tuple[float, float] | None = None,
                engine: Engine | None = None):
        """(labels int32, probabilities uint8, ImageCheck) of one 2-D image (H, W[, C]);
        `intensity`: its intensity_range, when known; `engine`: another engine for this call
        (one that counts, or checks for Cancel)."""
        image = np.asarray(image)
        return segment_checked(engine or self.engine, image, self.config, self.options,
                               self.instance_options, intensity)

    def __call__(self, image: np.ndarray, intensity: tuple[float, float] | None = None
                 ) -> tuple[np.ndarray, dict]:
        """(labels, info) of one 2-D image (H, W[, C]): labels int32, 0 = background, 1..N the
        nuclei; info: what the nucleus-size check found (diameter, scale, confidence,
        uncertain, warning), as summary.csv has it."""
        labels, _, check = self.checked(image, intensity)
        return labels, check.row()

    def blocks(self, image, **how) -> BlockRun:
        """A huge image (nucleiseg.io.wholeslide.LargeImage) block by block -> BlockRun;
        keywords as for nucleiseg.inference.blockwise.segment_blocks."""
        return segment_blocks(image, how.pop("model", self.engine), self.config, self.options,
                              self.instance_options, **how)

    def with_engine(self, engine) -> Segmenter:
        """The same options with another engine (a Dask worker's, a shared one)."""
        return dataclasses.replace(self, engine=None if engine is None else as_engine(engine))


def segment(image: np.ndarray, diameter="auto", model: str | Path | None = None
            ) -> tuple[np.ndarray, dict]:
    """Segment the nuclei of one image -> (labels, info).

    `image`: a 2-D grey (H, W) or colour (H, W, 3) array, any integer or float type, as read
    (it is normalised here). `diameter`: "auto" (the typical nucleus size is estimated and the
    image resized to the model's), a number of pixels, or None (as it is). `model`: a model
    file (.keras, .onnx, .tflite); None: the bundled pretrained model on ONNX Runtime.
    labels: int32, 0 background, 1..N one number per nucleus; info: the size check (diameter,
    scale, confidence, uncertain, warning). For many images, load a `Segmenter` once instead.
    """
    return Segmenter.load(model, diameter=diameter)(image)


def measure(labels: np.ndarray, image: np.ndarray,
            pixel_size: tuple[float, float] | None = None) -> list[dict]:
    """One row (a dict) per nucleus of `labels` over `image`: label, area, centroid, bounding
    box, equivalent diameter, eccentricity and mean intensity, in pixels (the columns of
    predict's measurements.csv); with `pixel_size` (y, x) in µm also area_um2, centroid_y_um,
    centroid_x_um and equivalent_diameter_um."""
    image = np.asarray(image)
    rows = measure_nuclei(np.asarray(labels), image if image.ndim == 3 else image[..., None])
    if pixel_size is None:
        return rows
    return [{**row, **in_micrometres(row, pixel_size)} for row in rows]

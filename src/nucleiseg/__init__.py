"""nucleiseg: find cell nuclei in microscopy images.

The public API (docs/api.md)::

    import nucleiseg

    labels, info = nucleiseg.segment(image)        # the bundled model; diameter "auto"
    rows = nucleiseg.measure(labels, image)        # one dict per nucleus
    segmenter = nucleiseg.Segmenter.load()         # many images: the model loaded once
    labels, info = segmenter(image)

Importing the package is cheap: `segment`, `measure` and `Segmenter` load on first use
(nucleiseg.inference.segmenter), and TensorFlow/Keras (the 'train' extra) only in the modules
that need them (`model`, `training`, `evaluation`, `export`, and `model.saving.load_model`);
prediction with ONNX Runtime never imports them. The subpackages form layers, each importing
only from those below it (docs/design.md).
"""

from nucleiseg.errors import DataError, NucleisegError, UsageError

__version__ = "0.1.0"

__all__ = ["DataError", "NucleisegError", "Segmenter", "UsageError", "__version__", "measure",
           "segment"]

_LAZY = {"segment": "nucleiseg.inference.segmenter", "measure": "nucleiseg.inference.segmenter",
         "Segmenter": "nucleiseg.inference.segmenter"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nucleiseg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

"""nucleiseg: find cell nuclei in microscopy images.

Importing the package is cheap; TensorFlow/Keras (the 'train' extra) load only in the modules
that need them (`model`, `data`, `keras_metrics`, `train`, `evaluate`, `export`, and
`saving.load_model`); prediction with ONNX Runtime never imports them.
"""

from nucleiseg.errors import DataError, NucleisegError, UsageError

__version__ = "0.1.0"

__all__ = ["DataError", "NucleisegError", "UsageError", "__version__"]

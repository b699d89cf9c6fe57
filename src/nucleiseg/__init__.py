"""nucleiseg: find cell nuclei in microscopy images.

Importing the package is cheap; TensorFlow/Keras load only in the modules that need them
(`model`, `train`, `evaluate`, `infer`, `saving`).
"""

from nucleiseg.errors import DataError, NucleisegError, UsageError

__version__ = "0.1.0"

__all__ = ["DataError", "NucleisegError", "UsageError", "__version__"]

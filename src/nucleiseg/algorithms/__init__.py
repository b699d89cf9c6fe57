"""Numpy-only algorithms: no TensorFlow, no file IO."""

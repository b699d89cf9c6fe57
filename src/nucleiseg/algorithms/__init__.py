"""Numerical building blocks on NumPy, SciPy and scikit-image only: no model, no files."""

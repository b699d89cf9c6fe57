"""What training shows of a model as it learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.inference.predict import create_mask, predict_logits


def show_predictions(model, images: np.ndarray, masks: np.ndarray, path: Path) -> None:
    """Predict model-ready images and draw input / true mask / predicted mask rows to `path`
    (the original's `show_predictions`, to a file instead of a window)."""
    from nucleiseg.render import prediction_grid

    prediction_grid(images, masks, create_mask(predict_logits(model, images)), path)

"""Training throughput (images/s): the project's tf.data pipeline against a naive reference that
calls model.fit on in-memory NumPy arrays as the original notebook did, at the same image size.

Each case runs in its own process (`python -m benchmarks.training CASE SIZE DATA`), because
TensorFlow's deterministic-ops switch, which `nucleiseg train` turns on, is process-wide.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import run_child

CASES = {
    # size: (sampling, batch size, timed steps, model configuration)
    128: ("resize", 16, 30, {}),
    256: ("crops", 8, 20, {"target": "boundary", "boundary_weight": 2.0,
                           "decoder_filters": (256, 128, 64, 32)}),
}


def load_images(data_dir: Path | None, count: int = 64):
    from nucleiseg.io.images import bundled_sample, find_samples, load_samples

    root = data_dir if data_dir is not None and Path(data_dir).is_dir() else bundled_sample()
    samples, _ = find_samples(root, skip_bad=True)
    loaded, _ = load_samples(samples[:count], skip_bad=True)
    return [image for _, image, _ in loaded], [labels for _, _, labels in loaded]


def measure(case: str, size: int, data_dir: Path | None) -> dict:
    from nucleiseg.algorithms.preprocess import normalize_image
    from nucleiseg.config import TrainConfig
    from nucleiseg.training.data import (
        make_crop_dataset,
        make_train_dataset,
        prepare_arrays,
        random_crops,
    )
    from nucleiseg.training.fit import build_model, seed_everything

    sampling, batch, steps, model_config = CASES[size]
    config = TrainConfig(image_size=size, sampling=sampling, batch_size=batch, **model_config)
    images, labels = load_images(data_dir)
    if case.startswith("pipeline"):  # as nucleiseg train does (--deterministic or not)
        seed_everything(config.seed, deterministic=case == "pipeline-deterministic")
    if sampling == "resize":
        x, y = prepare_arrays(images, labels, size, config.target)
    else:
        normalised = [normalize_image(image) for image in images]
        if case == "naive":  # the crops, cut beforehand into arrays in memory
            crops = random_crops(normalised, labels, size, seed=0, target=config.target)
            pairs = [next(crops) for _ in range(batch * (steps + 2))]
            x, y = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    model = build_model(config)

    if case == "naive":
        n = batch * steps
        x = np.resize(x, (n + 2 * batch, *x.shape[1:]))
        y = np.resize(y, (n + 2 * batch, *y.shape[1:]))
        model.fit(x[:2 * batch], y[:2 * batch], batch_size=batch, epochs=1, verbose=0)  # compile
        start = time.perf_counter()
        model.fit(x[2 * batch:], y[2 * batch:], batch_size=batch, epochs=1, verbose=0)
    else:
        dataset = (make_train_dataset(x, y, batch, config.seed)[0] if sampling == "resize" else
                   make_crop_dataset(normalised, labels, size, batch, config.seed,
                                     target=config.target))
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # compile
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"case": case, "size": size, "sampling": sampling, "batch_size": batch,
            "steps": steps, "seconds": round(seconds, 2),
            "images_per_second": round(batch * steps / seconds, 2)}


def run(data_dir: Path | None, quick: bool = False) -> list[dict]:
    rows = []
    for size in CASES:
        for case in ("naive", "pipeline", "pipeline-deterministic"):
            result, peak = run_child(["benchmarks.training", case, str(size), str(data_dir)])
            rows.append(result | {"peak_rss_mb": round(peak)})
            print(f"  training {size} px {case}: {result['images_per_second']} images/s",
                  flush=True)
    return rows


if __name__ == "__main__":
    from nucleiseg.inference.engines import import_tensorflow_quietly

    import_tensorflow_quietly()
    case, size, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(measure(case, size, None if data == "None" else Path(data))))

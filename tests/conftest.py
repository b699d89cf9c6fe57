"""Synthetic data factories: disks on a background, written in every supported layout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
               / "dsb2018-stage1-train")


def make_disks(shape=(64, 64), count=4, radius=(5, 9), seed=0, bright_background=False):
    """A grey uint8 image of `count` non-overlapping bright disks and its label image."""
    rng = np.random.default_rng(seed)
    height, width = shape
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:height, :width]
    placed = 0
    for _ in range(200):
        if placed == count:
            break
        r = rng.integers(*radius)
        cy, cx = rng.integers(r, height - r), rng.integers(r, width - r)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        grown = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 2) ** 2
        if labels[grown].any():
            continue
        placed += 1
        labels[disk] = placed
    image = np.where(labels > 0, 200, 20).astype(np.float64)
    image += rng.normal(0, 8, shape)
    if bright_background:
        image = 255 - image
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, array)
    return path


def write_paired(root: Path, samples, mask_style="labels16", image_suffix=".png",
                 image_dir="images", mask_dir="masks") -> Path:
    """samples: [(name, image, labels)]; masks as 16-bit labels, 'binary255' or 'binary01'."""
    for name, image, labels in samples:
        write_image(root / image_dir / f"{name}{image_suffix}", image)
        if mask_style == "labels16":
            mask = labels.astype(np.uint16)
        elif mask_style == "binary255":
            mask = ((labels > 0) * 255).astype(np.uint8)
        else:
            mask = (labels > 0).astype(np.uint8)
        write_image(root / mask_dir / f"{name}.png", mask)
    return root


def write_dsb(root: Path, samples) -> Path:
    """The Data Science Bowl layout: one binary 0/255 mask file per nucleus."""
    for name, image, labels in samples:
        write_image(root / name / "images" / f"{name}.png", image)
        for value in range(1, labels.max() + 1):
            write_image(root / name / "masks" / f"{name}_{value:03d}.png",
                        ((labels == value) * 255).astype(np.uint8))
    return root


def disk_samples(count=6, shape=(64, 64), seed=0):
    return [(f"img{i:02d}", *make_disks(shape, count=3 + i % 3, seed=seed + i))
            for i in range(count)]


@pytest.fixture
def samples():
    return disk_samples()


@pytest.fixture
def paired_dir(tmp_path, samples):
    return write_paired(tmp_path / "paired", samples)


@pytest.fixture
def dsb_dir(tmp_path, samples):
    return write_dsb(tmp_path / "dsb", samples)


TINY_MODEL = dict(encoder_alpha=0.35, decoder_filters=(32, 16, 16, 8))


# ---------------------------------------------------------------- shared, once per session


@pytest.fixture(scope="session")
def bundled_engine():
    """(engine, record) of the bundled pretrained model on its default engine (ONNX Runtime,
    int8), loaded once for the whole session."""
    from nucleiseg.inference.engines import load_engine

    return load_engine(None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny model (boundary target, crops of 64 px) trained once for the whole session on
    synthetic disks: its model.keras. Copy it before writing beside it."""
    from nucleiseg.config import TrainConfig
    from nucleiseg.training.fit import train

    root = tmp_path_factory.mktemp("tiny_model")
    data = write_paired(root / "data", disk_samples(8))
    config = TrainConfig(image_size=64, sampling="crops", target="boundary", epochs=1,
                         batch_size=4, steps_per_epoch=2, **TINY_MODEL)
    run, _ = train(config, data, root / "run", verbose=0, log=lambda *_: None)
    return run / "model.keras"



@pytest.fixture
def qt_app():
    """A QApplication, offscreen (the napari widget tests); skipped without a Qt binding."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from qtpy.QtWidgets import QApplication
    except Exception as exc:  # no Qt binding, or its libraries missing
        pytest.skip(f"no usable Qt binding ({exc})")
    return QApplication.instance() or QApplication([])


def wait_for(app, widget, seconds):
    """Process Qt events until `widget`'s worker is done (at most `seconds`)."""
    end = time.monotonic() + seconds
    while widget.running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    assert not widget.running, "the worker did not finish"

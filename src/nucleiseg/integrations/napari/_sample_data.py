"""napari sample data: the bundled test images (Data Science Bowl 2018 crops, CC0), each with
its hand-drawn nuclei as a hidden Labels layer to compare the widget's result with."""

from __future__ import annotations

from pathlib import Path

SAMPLES = {  # key: (file stem in sample_data/test, what it shows)
    "fluorescence": ("fluorescence_df53d0b6", "fluorescence (DAPI-like), 256²"),
    "histology": ("histology_c0152b1a", "H&E histology, 256²"),
    "brightfield": ("brightfield_76a372bf", "bright-field, 256²"),
}


def sample_layers(key: str) -> list[tuple]:
    """[(image, kwargs, 'image'), (true nuclei, kwargs, 'labels')] of one bundled test image."""
    from nucleiseg.io.images import bundled_sample, read_label_mask, read_pixels

    stem = SAMPLES[key][0]
    root = Path(bundled_sample("test"))
    image, info = read_pixels(root / "images" / f"{stem}.png")
    truth = read_label_mask(root / "masks" / f"{stem}.png")
    rgb = image.ndim == 3
    return [(image, {"name": stem, "rgb": rgb}, "image"),
            (truth, {"name": f"{stem} true nuclei", "visible": False}, "labels")]


def fluorescence() -> list[tuple]:
    return sample_layers("fluorescence")


def histology() -> list[tuple]:
    return sample_layers("histology")


def brightfield() -> list[tuple]:
    return sample_layers("brightfield")

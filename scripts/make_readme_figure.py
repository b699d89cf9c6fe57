"""Make docs/images/overview.png, the figure at the top of README.md: the bundled model, run as
`nucleiseg predict` runs it (default options, the default ONNX engine: no TensorFlow), on one
fluorescence, one H&E and one bright-field image of the bundled test sample; each image above
the overlay that predict writes for it (<stem>_overlay.png: the outline of every nucleus).

    python scripts/make_readme_figure.py [--out docs/images/overview.png]

Needs matplotlib (the `plots` extra). The images are the napari plugin's sample images.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np

TITLES = {"fluorescence": "fluorescence", "histology": "H&E histology",
          "brightfield": "bright-field"}


def segment(stems: list[str], out_dir: Path) -> dict[str, int]:
    """Run predict_files on the bundled test images `stems`; {stem: nuclei found}."""
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.io.images import bundled_sample
    from nucleiseg.pipeline.run import predict_files

    engine, record = load_engine()  # the bundled model on the engine predict picks by default
    images = [bundled_sample("test") / "images" / f"{stem}.png" for stem in stems]
    predict_files(engine, record, images, out_dir, progress=lambda *_: None)
    with open(out_dir / "summary.csv", newline="") as file:
        return {Path(row["image"]).stem: int(row["nuclei"]) for row in csv.DictReader(file)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/overview.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from nucleiseg.algorithms.preprocess import intensity_range
    from nucleiseg.integrations.napari._sample_data import SAMPLES
    from nucleiseg.io.images import bundled_sample, read_image
    from nucleiseg.render import outline_overlay

    stems = [SAMPLES[key][0] for key in TITLES]
    with tempfile.TemporaryDirectory() as tmp:
        counts = segment(stems, Path(tmp))
        overlays = [np.asarray(Image.open(Path(tmp) / f"{stem}_overlay.png")) for stem in stems]
    # the images as the overlays show them (the same intensity stretch), without outlines
    images = []
    for stem in stems:
        image = read_image(bundled_sample("test") / "images" / f"{stem}.png")
        images.append(outline_overlay(image, np.zeros(image.shape[:2], np.int32),
                                      *intensity_range(image)))

    dpi = 100  # 256-px images drawn at their own size: one figure inch holds 100 pixels
    width = sum(image.shape[1] for image in images) / dpi + 0.4
    height = 2 * max(image.shape[0] for image in images) / dpi + 0.9
    figure, axes = plt.subplots(2, len(stems), figsize=(width, height), dpi=dpi,
                                layout="constrained")
    for col, (key, stem) in enumerate(zip(TITLES, stems)):
        axes[0][col].imshow(images[col], interpolation="nearest")
        axes[0][col].set_title(TITLES[key], fontsize=11)
        axes[1][col].imshow(overlays[col], interpolation="nearest")
        axes[1][col].set_title(f"{counts[stem]} nuclei found", fontsize=11)
        for ax in axes[:, col]:
            ax.set_axis_off()
    figure.suptitle("nucleiseg predict with the bundled model: image (top), "
                    "each nucleus found outlined (bottom)", fontsize=11)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        figure.savefig(Path(tmp) / "figure.png", dpi=dpi)
        plt.close(figure)
        # a 256-colour palette: a third of the size, no visible change at this scale
        with Image.open(Path(tmp) / "figure.png") as drawn:
            drawn.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

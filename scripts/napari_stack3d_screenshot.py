"""Make docs/images/napari_stack3d.png: a generated fluorescence z-stack segmented with
`nucleiseg predict --planes stitch`, its 3-D nuclei shown in napari's 3-D view. Needs
nucleiseg[napari] and a display; headless:

    xvfb-run -s "-screen 0 1400x900x24" python scripts/napari_stack3d_screenshot.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

Z_SPACING, PIXEL = 2.0, 0.5  # µm: an anisotropic stack, as a widefield or confocal one


def make_stack(shape=(24, 192, 192), count=45, seed=1) -> np.ndarray:
    """uint16 Z x H x W: bright ellipsoids of random size and orientation on a dark, noisy
    background, blurred more along z (as a microscope's point spread)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    value = np.zeros(shape, np.float32)
    for _ in range(count):
        cz, cy, cx = rng.uniform(3, shape[0] - 3), *rng.uniform(12, shape[1] - 12, 2)
        rz, ry, rx = rng.uniform(1.8, 3.0), *rng.uniform(7, 12, 2)
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        value = np.maximum(value, np.clip(1.2 - inside, 0, 1) * rng.uniform(0.6, 1.0))
    value = ndimage.gaussian_filter(value, (1.0, 1.2, 1.2))
    image = 300 + 3000 * value + rng.normal(0, 60, shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/napari_stack3d.png"))
    parser.add_argument("--size", default="1100x760", help="window size WxH")
    args = parser.parse_args()

    import napari
    import tifffile
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from nucleiseg.cli import main as nucleiseg

    work = Path(tempfile.mkdtemp())
    stack = make_stack()
    tifffile.imwrite(work / "stack.tif", stack, imagej=True,
                     resolution=(1 / PIXEL, 1 / PIXEL),
                     metadata={"axes": "ZYX", "spacing": Z_SPACING, "unit": "um"})
    assert nucleiseg(["predict", str(work / "stack.tif"), "--planes", "stitch",
                      "--out", str(work / "out")]) == 0
    labels = tifffile.imread(work / "out" / "stack_labels.tif")
    print(f"{labels.max()} 3-D nuclei in a {stack.shape} stack")

    viewer = napari.Viewer(show=True, ndisplay=3)
    width, height = map(int, args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    scale = (Z_SPACING, PIXEL, PIXEL)
    viewer.add_image(stack, name="stack (DAPI-like)", scale=scale, colormap="gray",
                     rendering="mip", opacity=0.6)
    viewer.add_labels(labels, name="stack nuclei (3-D)", scale=scale, opacity=0.8)
    viewer.reset_view()
    scene = getattr(viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
    camera = scene.camera if scene is not None else viewer.camera
    camera.angles = (0, 50, 75)
    camera.zoom *= 0.9
    app = QApplication.instance()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(shot[..., :3]).quantize(colors=128,
                                                      method=Image.Quantize.MEDIANCUT)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {picture.size[0]}x{picture.size[1]}, {args.out.stat().st_size:,} bytes")
    viewer.close()


if __name__ == "__main__":
    main()

"""Make docs/images/napari_widget.png: a napari window with the 'Segment nuclei' widget docked,
after segmenting a bundled sample image. Needs nucleiseg[napari] and a display; headless:

    xvfb-run -s "-screen 0 1400x900x24" python scripts/napari_screenshot.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/images/napari_widget.png"))
    parser.add_argument("--sample", default="fluorescence")
    parser.add_argument("--size", default="1280x760", help="window size WxH")
    args = parser.parse_args()

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    width, height = map(int, args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample("nucleiseg", args.sample)
    _, widget = viewer.window.add_plugin_dock_widget("nucleiseg", "Segment nuclei")
    image = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    widget._image.value = image
    widget.run()
    app = QApplication.instance()
    end = time.monotonic() + 120
    while widget.running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    viewer.layers.selection.active = viewer.layers[f"{image.name} nuclei"]
    viewer.reset_view()
    app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(shot[..., :3])
    picture = picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {picture.size[0]}x{picture.size[1]}, {args.out.stat().st_size:,} bytes; "
          f"{widget._status.value!r}")
    viewer.close()


if __name__ == "__main__":
    main()

"""Make docs/images/napari_retrain_*.png: the correct-and-retrain loop in a real napari window.

1. napari_retrain_add.png: a sample segmented with the bundled model, its labels corrected
   (here: one nucleus erased and one painted, as napari's label tools would), the pair and a
   second one added to a training set with 'Add to training set'.
2. napari_retrain_training.png: 'Fine-tune' running, the progress bar and epoch, loss and
   time left.
3. napari_retrain_done.png: the fine-tuned model selected in 'Segment nuclei' and the image
   segmented again with it.

Needs nucleiseg[napari] and a display; headless:

    xvfb-run -s "-screen 0 1400x900x24" python scripts/napari_retrain_screenshot.py

Epochs are shortened to 4 batches (2 in a child process; the widget's are 20) so the run
takes a few minutes on a laptop CPU. napari_retrain_done.png is not in the docs yet: in the
--child-training run the Segment widget's model menu still showed 'bundled' (see the report).

With --child-training (needed under Xvfb: TensorFlow and Mesa's software OpenGL, llvmpipe,
crash when loaded in one process), the fine-tune and the second segmentation run the widget's
own functions (`_train.fine_tune`, `segment_layer_data`) in a child Python process, and the
widgets show what it reports (progress, the new model, the labels) as they would from their
worker threads. On a desktop with a GPU driver, run without it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--folder", type=Path, default=None,
                        help="training folder (default: a new temporary folder)")
    parser.add_argument("--size", default="1280x820", help="window size WxH")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--child-training", action="store_true")
    args = parser.parse_args()

    import napari
    import numpy as np
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from nucleiseg.integrations.napari import _train

    _train.FINE_TUNE_STEPS = 4
    folder = args.folder or Path(tempfile.mkdtemp(prefix="nucleiseg-retrain-")) / "corrected"

    def spin(seconds=0.5):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    def wait(widget, seconds=900, until=None):
        end = time.monotonic() + seconds
        while widget.running and time.monotonic() < end:
            app.processEvents()
            time.sleep(0.05)
            if until is not None and until():
                return
        spin()

    def shoot(name):
        spin()
        shot = viewer.screenshot(canvas_only=False, flash=False)
        picture = Image.fromarray(shot[..., :3])
        picture = picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, optimize=True)
        print(f"{path}: {picture.size[0]}x{picture.size[1]}, {path.stat().st_size:,} bytes")

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    width, height = map(int, args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    _, segment = viewer.window.add_plugin_dock_widget("nucleiseg", "Segment nuclei")
    _, retrain = viewer.window.add_plugin_dock_widget("nucleiseg", "Correct and retrain")
    retrain._folder.value = folder

    # a pair added before: the fluorescence sample mirrored, with its hand-drawn nuclei
    viewer.open_sample("nucleiseg", "fluorescence")
    truth = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels))
    first = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    mirrored = viewer.add_image(np.fliplr(first.data), name="fluorescence mirrored")
    retrain._image.value = mirrored
    retrain._corrected.value = viewer.add_labels(np.fliplr(truth.data),
                                                 name="fluorescence mirrored nuclei")
    retrain.add_to_training_set()
    viewer.layers.clear()

    viewer.open_sample("nucleiseg", "fluorescence")
    image = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    for layer in list(viewer.layers):
        if layer is not image:
            viewer.layers.remove(layer)
    segment._image.value = image
    segment.run()
    wait(segment)
    labels = viewer.layers[f"{image.name} nuclei"]
    # the corrections a user makes with the label tools: erase a false nucleus, paint a missed
    data = labels.data.copy()
    values, counts = np.unique(data[data > 0], return_counts=True)
    data[data == values[np.argmin(counts)]] = 0
    yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
    free = np.argwhere(data == 0)
    cy, cx = free[len(free) // 2]
    data[((yy - cy) ** 2 + (xx - cx) ** 2 <= 36) & (data == 0)] = data.max() + 1
    labels.data = data
    if f"{image.name} centroids" in viewer.layers:
        viewer.layers.remove(f"{image.name} centroids")
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    retrain._image.value = image
    retrain._corrected.value = labels
    retrain.add_to_training_set()
    viewer.reset_view()
    shoot("napari_retrain_add.png")

    retrain._minutes.value = args.minutes
    if args.child_training:
        result = child_fine_tune(app, retrain, folder, args.minutes, shoot)
        labels_path = folder / "runs" / "segmented.npy"
        run_child(CHILD_SEGMENT, str(result["model"]), str(folder / "images" / f"{image.name}.png"),
                  str(labels_path))
        retrain._finished(result)
        from nucleiseg.integrations.napari._results import add_result_layers
        from nucleiseg.integrations.napari._segment import LayerResult

        saved = np.load(labels_path, allow_pickle=True).item()
        add_result_layers(viewer, image, LayerResult(**saved))
        segment._status.value = f"{len(saved['features']['index'])} nuclei (child process)"
    else:
        retrain.start_fine_tune()
        wait(retrain, until=lambda: "step 3/" in retrain._stage.value)
        shoot("napari_retrain_training.png")
        wait(retrain)
        labels.mode = "pan_zoom"
        segment._image.value = image
        segment.run()
        wait(segment)
    print("fine-tune:", retrain._status.value)
    labels.mode = "pan_zoom"
    if f"{image.name} centroids" in viewer.layers:
        viewer.layers[f"{image.name} centroids"].visible = False
    viewer.layers.selection.active = viewer.layers[f"{image.name} nuclei"]
    shoot("napari_retrain_done.png")
    print("segment:", segment._status.value)
    viewer.close()


CHILD_TRAIN = """
import json, sys
from pathlib import Path
from nucleiseg.integrations.napari import _train
_train.FINE_TUNE_STEPS = 2
def report(fraction, text):
    print(json.dumps({"fraction": fraction, "text": text}), flush=True)
result = _train.fine_tune(Path(sys.argv[1]), None, minutes=float(sys.argv[2]), report=report)
print(json.dumps({"result": {k: (str(v) if v is not None else None) for k, v in result.items()}}),
      flush=True)
"""

CHILD_SEGMENT = """
import sys
import numpy as np
from nucleiseg.inference.engines import load_engine
from nucleiseg.io.images import read_array
from nucleiseg.integrations.napari._segment import segment_layer_data
engine, record = load_engine(sys.argv[1])
result = segment_layer_data(read_array(sys.argv[2]), engine, record)
np.save(sys.argv[3], {"labels": result.labels, "features": result.features,
                      "checks": result.checks})
"""


def run_child(code, *args):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True) if code is CHILD_TRAIN else subprocess.run(
        [sys.executable, "-c", code, *args], check=True)


def child_fine_tune(app, retrain, folder, minutes, shoot):
    """The widget's fine-tune in a child process, its reports shown by the widget."""
    import json
    import queue
    import threading
    from pathlib import Path

    child = run_child(CHILD_TRAIN, str(folder), str(minutes))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stdout] + [lines.put(None)],
                     daemon=True).start()
    for button in (retrain._fine_tune, retrain._resume, retrain._add):
        button.enabled = False
    retrain._cancel.enabled = True
    retrain._start.value = "nuclei_dsb2018.keras"
    retrain._stage.value = "loading the data and the model"
    shot, result = False, None
    while True:
        app.processEvents()
        try:
            line = lines.get(timeout=0.05)
        except queue.Empty:
            continue
        if line is None:
            break
        message = json.loads(line) if line.startswith("{") else {}
        if "text" in message:
            retrain._on_progress(message["fraction"], message["text"])
            if not shot and "step 2/" in message["text"]:
                shoot("napari_retrain_training.png")
                shot = True
        if "result" in message:
            result = message["result"]
    child.wait()
    retrain._stopped()
    return {"run_dir": Path(result["run_dir"]), "model": Path(result["model"]),
            "message": result["message"]}


if __name__ == "__main__":
    main()

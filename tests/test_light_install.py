"""Issue 14: `pip install nucleiseg` predicts without TensorFlow; what needs it says which extra
to install; predict writes outlines for QuPath and Fiji (--geojson, --imagej-rois).

The real fresh environment (a new venv, `pip install .`, the bundled sample segmented) is
scripts/check_light_install.sh (`make check-light-install`, run by .ci/run after `make test`)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from test_exchange import iou, rasterise, roi_rings

from nucleiseg.cli import main
from nucleiseg.io.images import bundled_sample

# Runs `nucleiseg ARGS...` in a Python where importing TensorFlow, Keras or TensorBoard fails as
# it does when they are not installed, then says which nucleiseg modules were imported.
WITHOUT_TENSORFLOW = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tensorboard", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from nucleiseg.cli import main

code = main(sys.argv[1:])
print("modules:", " ".join(sorted(m for m in sys.modules if m.split(".")[0] in
                                  ("nucleiseg", "tensorflow", "keras", "tensorboard"))))
sys.exit(code)
"""


def run_without_tensorflow(*argv):
    return subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, *map(str, argv)],
                          capture_output=True, text=True, timeout=300)


def sample_images():
    """Two of the bundled test images: a fluorescence and a histology one."""
    folder = bundled_sample("test") / "images"
    return [next(folder.glob("fluorescence_*.png")), next(folder.glob("histology_*.png"))]


def test_predict_needs_no_tensorflow_and_its_outlines_read_back_as_its_labels(tmp_path):
    import roifile
    import tifffile

    out = tmp_path / "out"
    result = run_without_tensorflow("predict", *sample_images(), "--out", out, "--geojson",
                                    "--imagej-rois")
    assert result.returncode == 0, result.stderr
    assert "engine: onnx-int8" in result.stdout
    modules = result.stdout.split("modules:")[1].split()
    assert "nucleiseg.io.outlines" in modules
    assert not [m for m in modules if not m.startswith("nucleiseg")]
    assert "nucleiseg.training.data" not in modules and "nucleiseg.model.saving" in modules
    measurements = list(csv.DictReader(open(out / "measurements.csv", encoding="utf-8")))
    for path in sample_images():
        stem = path.stem
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        count = int(labels.max())
        assert count >= 5
        collection = json.loads((out / f"{stem}.geojson").read_text())
        features = collection["features"]
        assert [f["properties"]["label"] for f in features] == list(range(1, count + 1))
        rows = {int(r["label"]): r for r in measurements if r["image"] == path.name}
        for feature in features:
            label = feature["properties"]["label"]
            assert feature["properties"]["objectType"] == "detection"
            assert feature["properties"]["measurements"]["area"] == float(rows[label]["area"])
            geometry = feature["geometry"]
            polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                        else geometry["coordinates"])
            back = rasterise([ring for polygon in polygons for ring in polygon], labels.shape)
            assert iou(back, labels == label) >= 0.95, (stem, label)
            assert np.array_equal(back, labels == label), (stem, label)  # exact, in fact
        rois = roifile.roiread(out / f"{stem}_rois.zip")
        assert [roi.name for roi in rois] == [str(label) for label in range(1, count + 1)]
        for roi in rois:
            back = rasterise(roi_rings(roi), labels.shape)
            assert iou(back, labels == int(roi.name)) >= 0.95, (stem, roi.name)
            assert np.array_equal(back, labels == int(roi.name)), (stem, roi.name)


@pytest.mark.parametrize("argv,says", [
    (["train", "--epochs", "1"], "training needs TensorFlow and Keras: "
     "pip install 'nucleiseg[train]'"),
    (["evaluate"], "evaluate runs .keras models with TensorFlow and Keras: "
     "pip install 'nucleiseg[train]'"),
    (["export", "--format", "onnx", "--out", "{tmp}/m.onnx"],
     "export needs TensorFlow and Keras: pip install 'nucleiseg[train,export]'"),
    (["predict", "--engine", "keras", "{image}", "--out", "{tmp}/out"],
     "--engine keras needs TensorFlow and Keras: pip install 'nucleiseg[train]'"),
])
def test_commands_that_need_tensorflow_say_which_extra_in_one_line(tmp_path, capsys,
                                                                   monkeypatch, argv, says):
    for name in ("tensorflow", "keras"):  # import tensorflow -> ModuleNotFoundError
        monkeypatch.setitem(sys.modules, name, None)
    image = sample_images()[0]
    code = main([a.format(tmp=tmp_path, image=image) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"nucleiseg {argv[0]}: error: {says}"), line
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before any work


def test_one_line_also_from_a_real_missing_module(tmp_path):
    result = run_without_tensorflow("train", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip() == ("nucleiseg train: error: training needs TensorFlow and "
                                     "Keras: pip install 'nucleiseg[train]'")


def test_outlines_are_outputs_for_resume_and_overwrite(tmp_path, capsys):
    image = sample_images()[0]
    out = tmp_path / "out"
    stem = image.stem
    assert main(["predict", str(image), "--out", str(out)]) == 0
    assert not (out / f"{stem}.geojson").exists() and not (out / f"{stem}_rois.zip").exists()
    capsys.readouterr()
    argv = ["predict", str(image), "--out", str(out), "--geojson"]
    assert main(argv) == 2  # the labels exist: neither --resume nor --overwrite said what to do
    assert "output exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # the GeoJSON is missing: the image is done again
    printed = capsys.readouterr().out
    assert "done before" not in printed and (out / f"{stem}.geojson").exists()
    assert main([*argv, "--resume"]) == 0
    assert "done before" in capsys.readouterr().out
    assert main([*argv, "--imagej-rois", "--resume"]) == 0
    assert "done before" not in capsys.readouterr().out
    assert (out / f"{stem}_rois.zip").exists()
    (out / f"{stem}.geojson").write_text("stale")
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / f"{stem}.geojson").read_text())["type"] == "FeatureCollection"

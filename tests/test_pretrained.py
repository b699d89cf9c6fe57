"""The pretrained model shipped in the package: present, self-describing, and working."""

import json

import numpy as np
import pytest
from conftest import make_disks, write_image

from nucleiseg.model.saving import bundled_model_path, read_record

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not bundled_model_path().is_file(), reason="no bundled model in this tree"),
]


def test_record_says_how_it_was_made():
    record = read_record(bundled_model_path())
    assert record["command"].startswith("nucleiseg train")
    assert record["config"]["sampling"] == "crops" and record["config"]["target"] == "boundary"
    assert len(record["split"]["val"]) > 50 and not set(record["split"]["val"]) & set(
        record["split"]["train"])
    assert record["evaluation"]["overall"]["dsb_score"] > 0.4
    assert bundled_model_path().stat().st_size < 25 * 2**20


def test_the_he_model_predicts_as_the_general_one_does():
    """Colour images run on the H&E model with the general model's record (options, tuned
    post-processing, nucleus size, stain reference): they must be the same in both."""
    from nucleiseg.model.saving import bundled_he_model_path

    he_path = bundled_he_model_path()
    assert he_path is not None and he_path.stat().st_size < 25 * 2**20
    general, he = read_record(bundled_model_path()), read_record(he_path)
    for key in ("config", "postprocessing", "nucleus_size", "stain_reference"):
        if key == "config":
            keys = ("sampling", "image_size", "target", "decoder_filters", "encoder_alpha")
            assert {k: he[key][k] for k in keys} == {k: general[key][k] for k in keys}
        else:
            assert he[key] == general[key], key
    # trained only on colour images of the general model's training side: none of its
    # held-out images
    assert not set(he["split"]["train"]) & set(general["split"]["val"])


def test_predict_without_model_on_mixed_sizes_and_depths(tmp_path, capsys):
    import tifffile

    from nucleiseg.cli import main

    grey, _ = make_disks((64, 64), count=3, seed=1)
    deep, _ = make_disks((300, 200), count=8, seed=2)
    rgba, _ = make_disks((100, 120), count=4, seed=3)
    write_image(tmp_path / "in" / "small.png", grey)
    write_image(tmp_path / "in" / "deep.tif", deep.astype(np.uint16) * 200)
    write_image(tmp_path / "in" / "rgba.png",
                np.dstack([rgba] * 3 + [np.full(rgba.shape, 255, np.uint8)]))
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    assert ("(colour images: the bundled H&E model, 4 TTA views unless read block by block)"
            in capsys.readouterr().out)
    for stem, shape in (("small", (64, 64)), ("deep", (300, 200)), ("rgba", (100, 120))):
        labels = tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif")
        assert labels.shape == shape and labels.dtype == np.uint16
        assert labels.max() >= 1, stem  # bright disks on a dark background are nuclei
    assert (tmp_path / "out" / "measurements.csv").exists()


def test_bundled_model_on_the_bundled_test_sample():
    from nucleiseg.evaluation import evaluate_model
    from nucleiseg.io.images import bundled_sample

    report = evaluate_model(None, bundled_sample("test"))
    assert report["images"] == 9
    assert report["foreground_iou"] > 0.7 and report["ap_50"] > 0.6, json.dumps(
        {k: report[k] for k in ("foreground_iou", "ap_50", "dsb_score")})


def test_segment_image_with_the_bundled_model():
    from nucleiseg.inference.predict import segment_image
    from nucleiseg.model.saving import load_model

    model, record = load_model()
    image, labels = make_disks((96, 96), count=4, seed=4)
    found = segment_image(model, image, record["config"])
    assert found.shape == image.shape and found.max() >= 1

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import disk_samples, make_disks, write_dsb, write_image, write_paired

from nucleiseg.cli import main

TINY = ["--encoder-alpha", "0.35", "--decoder-filters", "32,16,16,8"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_paired(root / "data", disk_samples(8))
    assert main(["train", "--data", str(data), "--out", str(root / "run"), "--epochs", "2",
                 "--image-size", "64", "--batch-size", "4", "--sampling", "crops",
                 "--target", "boundary", "--steps-per-epoch", "3", *TINY]) == 0
    return root, data, root / "run" / "model.keras"


@pytest.mark.slow
def test_evaluate_json_and_figure(trained_run, capsys):
    root, data, model = trained_run
    capsys.readouterr()
    figure = root / "test_predictions.png"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json",
                 "--figure", str(figure)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 8 and len(report["per_image"]) == 8
    assert report["by_kind"]["fluorescence"]["images"] == 8
    for key in ("loss", "pixel_accuracy", "foreground_iou", "dice", "ap_50", "dsb_score",
                "f1_50"):
        assert 0 <= report[key] and np.isfinite(report[key])
    assert report["true_nuclei"] == sum(row["true_nuclei"] for row in report["per_image"])
    assert figure.stat().st_size > 0
    assert report["postprocessing"]["split_levels"] == [0.8, 0.9]  # what the figures used
    assert main(["evaluate", "--model", str(model), "--data", str(data),
                 "--min-confidence", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "| DSB score |" in out and "| fluorescence | 8 |" in out
    assert "post-processing: " in out and "min_confidence 0.3" in out
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "val",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and report["split"] == "val"  # 30% of 8, rounded


@pytest.mark.slow
def test_predict_writes_masks_at_native_size(trained_run, tmp_path, capsys):
    root, _, model = trained_run
    big, _ = make_disks((100, 150), seed=9)
    write_image(tmp_path / "in" / "big.png", big)
    write_image(tmp_path / "in" / "deep.tif", (make_disks(seed=10)[0].astype(np.uint16) * 257))
    write_dsb(tmp_path / "dsb", disk_samples(2, seed=20))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(tmp_path / "in"), str(tmp_path / "dsb"),
                 "--out", str(out)]) == 0
    import csv

    import imageio.v3 as iio
    import tifffile

    labels = tifffile.imread(out / "big_labels.tif")
    assert labels.shape == (100, 150) and labels.dtype == np.uint16
    mask = iio.imread(out / "big_mask.png")
    assert mask.shape == (100, 150) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, labels > 0)
    assert iio.imread(out / "big_overlay.png").shape == (100, 150, 3)
    assert iio.imread(out / "deep_mask.png").shape == (64, 64)
    assert (out / "img00_labels.tif").exists() and (out / "img01_overlay.png").exists()
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [row["image"] for row in summary] == ["big.png", "deep.tif", "img00.png", "img01.png"]
    measurements = list(csv.DictReader(open(out / "measurements.csv")))
    big_rows = [row for row in measurements if row["image"] == "big.png"]
    assert len(big_rows) == labels.max() == int(summary[0]["nuclei"])
    for row in big_rows:
        assert int(float(row["area"])) == (labels == int(row["label"])).sum()
    # outputs are not overwritten without --overwrite
    assert main(["predict", "--model", str(model), str(tmp_path / "in"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_skips_an_unreadable_image_and_says_so(trained_run, tmp_path, capsys):
    _, _, model = trained_run
    write_image(tmp_path / "in" / "good.png", make_disks(seed=11)[0])
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    assert main(["predict", "--model", str(model), str(tmp_path / "in"),
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "broken.png: cannot read as an image" in err
    assert (tmp_path / "out" / "good_mask.png").exists()
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert "broken.png" in summary and "cannot read as an image" in summary


def test_eda_prints_statistics_and_writes_grid(paired_dir, tmp_path, capsys):
    assert main(["eda", "--data", str(paired_dir), "--out", str(tmp_path / "eda.png")]) == 0
    out = capsys.readouterr().out
    assert "images:       6" in out and "nuclei:" in out and "fluorescence (6)" in out
    assert (tmp_path / "eda.png").stat().st_size > 0


@pytest.mark.parametrize("argv,code,message", [
    (["eda", "--data", "{tmp}/nowhere", "--out", "{tmp}/x.png"], 3, "nowhere: no such folder"),
    (["train", "--data", "{tmp}", "--image-size", "100"], 2, "nearest sizes that work: 96 or 128"),
    (["train", "--freeze-encoder"], 2, "--freeze-encoder needs pretrained encoder weights"),
    (["evaluate", "--model", "{tmp}/none.keras", "--data", "{tmp}"], 3, "no such model file"),
])
def test_errors_are_one_line_with_exit_codes(tmp_path, capsys, argv, code, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_and_fast_help():
    result = subprocess.run([sys.executable, "-m", "nucleiseg", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "predict" in result.stdout
    result = subprocess.run([sys.executable, "-c", "import nucleiseg.cli, sys; "
                             "print('tensorflow' in sys.modules)"], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_train_without_data_uses_the_bundled_sample(tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
                 *TINY]) == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 31
    assert set(split["kinds"].values()) == {"fluorescence", "histology", "brightfield"}


def test_unwritable_output_is_a_one_line_error(paired_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["eda", "--data", str(paired_dir), "--out", str(blocker / "eda.png")]) == 1
    err = capsys.readouterr().err
    assert str(blocker) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_evaluate_classical_baseline(paired_dir, capsys):
    assert main(["evaluate", "--classical", "--data", str(paired_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "classical Otsu + watershed" and report["loss"] is None
    assert report["ap_50"] == 1.0 and report["images"] == 6 and report["postprocessing"] is None


@pytest.mark.slow
def test_predict_resume_does_only_what_is_missing(trained_run, tmp_path, capsys):
    _, _, model = trained_run
    for seed in range(3):
        write_image(tmp_path / "in" / f"im{seed}.png", make_disks(seed=30 + seed)[0])
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model), str(tmp_path / "in"), "--out", str(out)]
    assert main(argv) == 0
    full_summary = (out / "summary.csv").read_text()
    full_measurements = (out / "measurements.csv").read_text()
    # An interrupted run: im2 lost its overlay, the run tables were never written.
    (out / "im2_overlay.png").unlink()
    (out / "measurements.csv").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("im[01]_*")}
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before") == 2 and "2 of them from an earlier run" in printed
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("im[01]_*")} == kept
    assert (out / "im2_overlay.png").exists()
    assert (out / "measurements.csv").read_text() == full_measurements
    rows = (out / "summary.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows] == [r.split(",")[:3] for r in full_summary.splitlines()]
    assert main([*argv, "--resume", "--overwrite"]) == 2


@pytest.mark.slow
def test_interrupted_predict_leaves_complete_files_only(trained_run, tmp_path):
    from nucleiseg.infer import predict_files
    from nucleiseg.saving import load_model

    for seed in range(2):
        write_image(tmp_path / "in" / f"im{seed}.png", make_disks(seed=40 + seed)[0])
    model, record = load_model(trained_run[2])

    def interrupt_after_first(message):
        if message.startswith("[1/2]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_files(model, record, [tmp_path / "in"], tmp_path / "out",
                      progress=interrupt_after_first)
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["im0_labels.tif", "im0_mask.png", "im0_overlay.png"]  # no partial tables


@pytest.mark.slow
def test_predict_handles_spaces_and_non_utf8_file_names(trained_run, tmp_path):
    import os

    _, _, model = trained_run
    folder = os.fsdecode(bytes(tmp_path) + b"/my images")
    write_image(Path(folder) / os.fsdecode(b"caf\xe9 1.png"), make_disks(seed=50)[0])
    out = tmp_path / "out put"
    result = subprocess.run([sys.executable, "-m", "nucleiseg", "predict", "--model", str(model),
                             folder, "--out", str(out)], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert b"caf\\udce9 1.png" in result.stdout  # printed escaped, never a UnicodeEncodeError
    assert (out / os.fsdecode(b"caf\xe9 1_labels.tif")).exists()
    assert "caf\\udce9 1.png" in (out / "summary.csv").read_text()


def test_labels_switch_to_32_bits_above_65535_nuclei(tmp_path):
    import tifffile

    from nucleiseg.infer import label_image_dtype
    from nucleiseg.io import write_tiff

    assert label_image_dtype(65535) == np.uint16 and label_image_dtype(65536) == np.uint32
    labels = np.arange(70_000, dtype=np.uint32).reshape(280, 250)
    write_tiff(tmp_path / "many_labels.tif", labels.astype(label_image_dtype(int(labels.max()))))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "many_labels.tif"), labels)


@pytest.mark.parametrize("argv", [
    ["eda", "--data", "{tmp}", "--out", "{tmp}/eda.png"],
    ["evaluate", "--data", "{tmp}", "--figure", "{tmp}/figure.png"],
])
def test_figures_without_matplotlib_are_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                                                 argv):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib: pip install 'nucleiseg[plots]'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_post_processing_options_reach_it_and_bad_ones_are_refused(tmp_path, capsys):
    from nucleiseg.cli import build_parser, prediction_options

    parse = lambda *extra: build_parser().parse_args(["predict", "x.png", "--out", "o", *extra])
    record = {"postprocessing": {"split_levels": [0.7], "min_split_size": 50}}
    _, tuned = prediction_options(parse(), record)
    assert tuned.split_levels == (0.7,) and tuned.min_split_size == 50
    _, given = prediction_options(parse("--split-levels", "0.9,0.8", "--min-split-size", "20"),
                                  record)
    assert given.split_levels == (0.8, 0.9) and given.min_split_size == 20
    assert prediction_options(parse("--split-levels", "none"), record)[1].split_levels == ()
    assert prediction_options(parse("--min-confidence", "0.8"), record)[1].min_confidence == 0.8
    for bad in (["--split-levels", "1.5"], ["--split-levels", "high"],
                ["--min-split-size", "0"], ["--min-confidence", "1.5"]):
        try:  # argparse refuses the malformed ones, the command the rest
            code = main(["predict", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), *bad])
        except SystemExit as exit:
            code = exit.code
        assert code == 2
        err = capsys.readouterr().err
        assert bad[0] in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()

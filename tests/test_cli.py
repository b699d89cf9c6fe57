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
    from nucleiseg.model.saving import load_model
    from nucleiseg.pipeline.run import predict_files

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

    from nucleiseg.io.images import write_tiff
    from nucleiseg.pipeline.outputs import label_image_dtype

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
    default, none = prediction_options(parse(), record)[0], prediction_options(
        parse("--tta", "1"), record)[0]  # a --tta given is for colour images too
    assert (default.tta, default.colour_tta, none.tta, none.colour_tta) == (1, 4, 1, 1)
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


# ---------------------------------------------------------------- microscopy files (issue 13)


def nuclei_stack(planes=3, shape=(64, 64), seed=60):
    """(planes, 2, H, W) uint16: channel 1 holds bright disks (nuclei), channel 0 noise."""
    nuclei = np.stack([make_disks(shape, count=3, seed=seed + i)[0].astype(np.uint16) * 100
                       for i in range(planes)])
    noise = np.random.default_rng(seed).integers(0, 3000, nuclei.shape).astype(np.uint16)
    return np.stack([noise, nuclei], axis=1)


def write_ome(path, data, axes="ZCYX", size=0.5):
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, ome=True, compression="lzw", metadata={
        "axes": axes, "Channel": {"Name": ["GFP", "DAPI"]}, "PhysicalSizeX": size,
        "PhysicalSizeY": size})
    return path


def read_csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_z_stack_each_plane_by_channel_name(tmp_path, capsys):
    pytest.importorskip("onnxruntime")  # the bundled model's fast engine
    import tifffile

    data = nuclei_stack()
    write_ome(tmp_path / "in" / "cells.ome.tif", data)
    write_image(tmp_path / "in" / "flat.png", make_disks(seed=70)[0])
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--out", str(out), "--channel", "DAPI"]) == 0
    assert "cells.ome.tif: " in capsys.readouterr().out
    with tifffile.TiffFile(out / "cells_labels.tif") as tif:  # '.ome' is not in the stem
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        labels = tif.asarray()
        assert tif.pages[0].tags["XResolution"].value == (2, 1)  # 0.5 µm pixels
    assert labels.shape == (3, 64, 64) and labels.dtype == np.uint16
    rows = read_csv(out / "measurements.csv")
    stack_rows = [row for row in rows if row["image"] == "cells.ome.tif"]
    for z in range(3):  # nuclei are numbered per plane, each measured on its own plane
        in_plane = [row for row in stack_rows if row["z"] == str(z)]
        assert len(in_plane) == labels[z].max() >= 1
        assert {row["plane"] for row in in_plane} == {str(z)} and in_plane[0]["t"] == ""
        for row in in_plane:
            area = (labels[z] == int(row["label"])).sum()
            assert float(row["area"]) == area and float(row["area_um2"]) == area * 0.25
            assert float(row["centroid_x_um"]) == pytest.approx(float(row["centroid_x"]) * 0.5)
            assert float(row["equivalent_diameter_um"]) == pytest.approx(
                float(row["equivalent_diameter"]) * 0.5)
        # mean intensity from the nuclear channel, not the noise channel
        assert float(in_plane[0]["mean_intensity"]) > 10000
    flat_rows = [row for row in rows if row["image"] == "flat.png"]
    assert flat_rows and all(row[key] == "" for row in flat_rows
                             for key in ("plane", "t", "z", "area_um2", "centroid_y_um"))
    summary = {row["image"]: row for row in read_csv(out / "summary.csv")}
    assert summary["cells.ome.tif"]["planes"] == "3"
    assert summary["cells.ome.tif"]["pixel_size_um"] == "0.5"
    assert int(summary["cells.ome.tif"]["nuclei"]) == len(stack_rows)
    assert summary["flat.png"]["planes"] == "1" and summary["flat.png"]["pixel_size_um"] == ""
    import imageio.v3 as iio

    mask = iio.imread(out / "cells_mask.png")  # the middle plane
    np.testing.assert_array_equal(mask > 0, labels[1] > 0)


def test_predict_multichannel_without_channel_lists_the_channels(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    write_ome(tmp_path / "in" / "cells.ome.tif", nuclei_stack())
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert ("cells.ome.tif: 2 channels: 0 (GFP), 1 (DAPI); pass --channel with the index or "
            "name of the nuclear stain") in err and "Traceback" not in err
    assert not (tmp_path / "out" / "cells_labels.tif").exists()
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out2"),
                 "--channel", "Hoechst"]) == 1
    assert "--channel 'Hoechst': no channel named 'Hoechst'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_predict_projection_and_pixel_size_option(tmp_path, mode):
    pytest.importorskip("onnxruntime")
    import tifffile

    write_ome(tmp_path / "in" / "cells.ome.tif", nuclei_stack())
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--out", str(out), "--channel", "1",
                 "--planes", mode, "--pixel-size", "0.2"]) == 0
    labels = tifffile.imread(out / "cells_labels.tif")
    assert labels.shape == (64, 64) and labels.max() >= 1
    rows = read_csv(out / "measurements.csv")
    assert len(rows) == labels.max() and {row["z"] for row in rows} == {""}
    assert float(rows[0]["area_um2"]) == pytest.approx(float(rows[0]["area"]) * 0.04)
    summary = read_csv(out / "summary.csv")[0]
    assert summary["planes"] == "1" and summary["pixel_size_um"] == "0.2"  # the option wins


def test_predict_imagej_time_series_and_resume(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import tifffile

    data = nuclei_stack(planes=2)[:, 1]  # T, Y, X: one channel
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "movie.tif", data, imagej=True, compression="lzw",
                     resolution=(4, 4), metadata={"axes": "TYX", "unit": "um"})
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), "--out", str(out)]
    assert main(argv) == 0
    labels = tifffile.imread(out / "movie_labels.tif")
    assert labels.shape == (2, 64, 64)
    rows = read_csv(out / "measurements.csv")
    assert {row["t"] for row in rows} == {"0", "1"} and {row["z"] for row in rows} == {""}
    assert read_csv(out / "summary.csv")[0]["pixel_size_um"] == "0.25"
    measurements = (out / "measurements.csv").read_text()
    (out / "measurements.csv").unlink()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0  # measured again from the saved label stack
    assert "done before" in capsys.readouterr().out
    assert (out / "measurements.csv").read_text() == measurements


def test_bad_pixel_size_is_refused_before_any_work(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--pixel-size", "-1"]) == 2
    assert "--pixel-size must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def multichannel_paired(root, count=4):
    """A paired labelled set of 2-channel OME-TIFF images (nuclei in channel 'DAPI')."""
    import tifffile

    for i in range(count):
        image, labels = make_disks(seed=80 + i)
        noise = np.random.default_rng(i).integers(0, 255, image.shape).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "images" / f"s{i}.tif", np.stack([noise, image]), ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": ["actin", "DAPI"]}})
        write_image(root / "masks" / f"s{i}.png", labels.astype(np.uint16))
    return root


def test_evaluate_multichannel_set_needs_and_takes_channel(tmp_path, capsys):
    data = multichannel_paired(tmp_path / "data")
    assert main(["evaluate", "--classical", "--data", str(data)]) == 3
    err = capsys.readouterr().err
    assert "s0.tif: 2 channels: 0 (actin), 1 (DAPI); pass --channel" in err
    assert main(["evaluate", "--classical", "--data", str(data), "--channel", "DAPI",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and report["ap_50"] == 1.0 and report["channel"] == "DAPI"


@pytest.mark.slow
def test_train_on_multichannel_images_records_the_channel(tmp_path):
    data = multichannel_paired(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--image-size", "32", "--channel", "1", *TINY]) == 0
    assert json.loads((run / "run.json").read_text())["channel"] == 1

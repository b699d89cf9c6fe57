"""predict_files with images overlapped in threads writes what one image after the other writes,
and stops as cleanly."""

import threading

import numpy as np
import pytest
from conftest import make_disks, write_image

from nucleiseg.model.saving import bundled_model_path
from nucleiseg.pipeline.run import predict_files

pytestmark = pytest.mark.skipif(not bundled_model_path().is_file(),
                                reason="no bundled model in this tree")


@pytest.fixture(scope="module")
def bundled(bundled_engine):
    return bundled_engine


@pytest.fixture
def folder(tmp_path):
    """Small images of several kinds, and one that cannot be read (in the middle)."""
    import tifffile

    inputs = tmp_path / "in"
    write_image(inputs / "a_small.png", make_disks((64, 64), count=3, seed=1)[0])
    write_image(inputs / "b_tiled.png", make_disks((600, 540), count=60, seed=2)[0])
    write_image(inputs / "c_broken.png", np.zeros((8, 8), np.uint8))
    (inputs / "c_broken.png").write_bytes(b"not a png")
    big_nuclei, _ = make_disks((256, 256), count=5, radius=(25, 35), seed=3)  # auto: rescaled
    write_image(inputs / "d_big_nuclei.png", big_nuclei)
    stack = np.stack([make_disks((96, 128), count=5, seed=4 + z)[0] for z in range(3)])
    tifffile.imwrite(inputs / "e_stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    write_image(inputs / "f_rgb.png", np.dstack([make_disks((120, 100), seed=7)[0]] * 3))
    return inputs


def run(bundled, inputs, out, overlap, **kwargs):
    model, record = bundled
    messages = []
    results = predict_files(model, record, [inputs], out, progress=messages.append,
                            overlap=overlap, **kwargs)
    return results, messages


def files_of(out):
    """{name: bytes} of a run's outputs; summary.csv without its seconds column."""
    import csv
    import io

    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    rows = list(csv.reader(io.StringIO(files.pop("summary.csv").decode())))
    seconds = rows[0].index("seconds")
    files["summary.csv"] = [row[:seconds] + row[seconds + 1:] for row in rows]
    return files


def test_overlapped_run_writes_what_the_sequential_run_writes(bundled, folder, tmp_path):
    one_by_one, told = run(bundled, folder, tmp_path / "sequential", False, exports=("geojson",))
    threads = threading.active_count()
    overlapped, said = run(bundled, folder, tmp_path / "overlapped", True, exports=("geojson",))
    assert threading.active_count() == threads  # the run's threads have ended
    assert said == told
    assert any("skipped" in line and "c_broken.png" in line for line in said)
    assert any("(scale" in line for line in said)  # the auto diameter path ran a second pass
    assert [r.__dict__ | {"seconds": 0} for r in overlapped] == \
        [r.__dict__ | {"seconds": 0} for r in one_by_one]
    assert files_of(tmp_path / "overlapped") == files_of(tmp_path / "sequential")
    assert sum(r.nuclei for r in overlapped) > 50


def test_overlapped_resume_measures_what_the_sequential_resume_does(bundled, folder, tmp_path):
    for overlap, name in ((False, "sequential"), (True, "overlapped")):
        run(bundled, folder, tmp_path / name, overlap)
        (tmp_path / name / "d_big_nuclei_labels.tif").unlink()
        run(bundled, folder, tmp_path / name, overlap, resume=True)
    assert files_of(tmp_path / "overlapped") == files_of(tmp_path / "sequential")


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("how", ["interrupt", "disk full"])
def test_a_stopped_run_leaves_the_complete_files_of_the_images_before(bundled, folder, tmp_path,
                                                                     monkeypatch, overlap, how):
    """Stopped while reporting the first image (Ctrl-C; overlapped, the second is measured by
    then, ready to write) or writing the fourth's mask (a full disk): the images before keep
    their files, no image after has any, no partial file stays, and no thread of the run is
    left running."""
    import errno

    import nucleiseg.pipeline.one_file as infer

    second_measured = threading.Event()
    measure_planes, write_png = infer.measure_planes, infer.write_png

    def measure_and_tell(labels, planes, *args):
        rows = measure_planes(labels, planes, *args)
        if planes.shape[1:3] == (600, 540):
            second_measured.set()
        return rows

    def progress(message):
        if how == "interrupt" and message.startswith("[1/"):
            second_measured.wait(timeout=60 if overlap else 0)
            raise KeyboardInterrupt

    def full_disk_at_d(path, array):
        if how == "disk full" and path.name == "d_big_nuclei_mask.png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_png(path, array)

    monkeypatch.setattr(infer, "measure_planes", measure_and_tell)
    monkeypatch.setattr(infer, "write_png", full_disk_at_d)
    threads = threading.active_count()
    model, record = bundled
    with pytest.raises(KeyboardInterrupt if how == "interrupt" else OSError):
        predict_files(model, record, [folder], tmp_path / "out", progress=progress,
                      overlap=overlap)
    assert threading.active_count() == threads
    assert second_measured.is_set() == (overlap or how == "disk full")
    done = ["a_small"] if how == "interrupt" else ["a_small", "b_tiled"]
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    if how == "disk full":
        left.remove("d_big_nuclei_labels.tif")  # written before its mask failed, as one by one
    assert left == sorted(f"{stem}_{kind}" for stem in done
                          for kind in ("labels.tif", "mask.png", "overlay.png"))

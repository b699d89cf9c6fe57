"""Faults of a long predict run: a full disk, and a second run into the same --out."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import disk_samples, write_image

from nucleiseg.cli import main


@pytest.fixture
def folder(tmp_path):
    for name, image, _ in disk_samples(3, shape=(96, 96), seed=20):
        write_image(tmp_path / "in" / f"{name}.png", image)
    return tmp_path / "in"


def test_a_full_disk_names_the_output_and_resume_continues(folder, tmp_path, monkeypatch,
                                                            capsys):
    import nucleiseg.io.runfiles as io

    original = io.publish

    def full_for_one(partial, path):  # what Pillow and tifffile raise: no file name
        if Path(path).name == "img01_overlay.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(partial, path)

    monkeypatch.setattr(io, "publish", full_for_one)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"nucleiseg predict: error: {out / 'img01_overlay.png'}: No space left on "
                     "device; make room, then run the same command with --resume: it keeps the "
                     "images done and does the rest")
    assert sorted(p.name for p in out.iterdir()) == [
        "img00_labels.tif", "img00_mask.png", "img00_overlay.png", "img01_labels.tif",
        "img01_mask.png"]  # whole files only; no partials, no CSV, no lock
    monkeypatch.setattr(io, "publish", original)
    assert main(["predict", str(folder), "--out", str(out), "--resume"]) == 0
    assert "[2/3] img01.png: " in capsys.readouterr().out
    assert len((out / "summary.csv").read_text().splitlines()) == 4


def test_a_full_disk_while_writing_the_tables_names_them(folder, tmp_path, monkeypatch, capsys):
    import csv

    def full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out)]) == 1
    assert f"error: {out / 'measurements.csv'}: No space left" in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


HOLD = """
import sys, time
from nucleiseg.io.runfiles import OutputLock
OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_the_same_out_is_refused_until_the_first_ends(folder, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  p for p in sys.path if p)})
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main(["predict", str(folder), "--out", str(out), *extra]) == 1
            error = capsys.readouterr().err.strip()
            assert error == (f"nucleiseg predict: error: {out}: another nucleiseg run is "
                             f"writing there (pid {holder.pid} on {os.uname().nodename}); wait "
                             "for it to end, or choose another --out")
        assert sorted(p.name for p in out.iterdir()) == [".nucleiseg.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock goes with it
        holder.wait()
    assert main(["predict", str(folder), "--out", str(out)]) == 0
    assert not (out / ".nucleiseg.lock").exists()
    assert (out / "summary.csv").exists()


def test_dask_without_its_packages_or_with_a_bad_address_is_one_line(folder, tmp_path,
                                                                     monkeypatch, capsys):
    argv = ["predict", str(folder), "--out", str(tmp_path / "out"), "--dask"]
    assert main([*argv, "local:0"]) == 2
    assert "--dask local:N needs a number of workers N >= 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)  # not installed
    assert main([*argv, "local:2"]) == 2
    assert capsys.readouterr().err.strip() == ("nucleiseg predict: error: --dask needs dask and "
                                               "distributed: pip install 'nucleiseg[dask]'")
    assert not (tmp_path / "out").exists()

"""predict --dask: a real scheduler and worker processes on 127.0.0.1, started and stopped here.

The outputs of a Dask run are those of a local run; a worker killed while it writes loses and
doubles nothing; a huge image's blocks segmented on the workers stitch to the local labels.
"""

import csv
import dataclasses
import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import disk_samples, write_image

distributed = pytest.importorskip(
    "distributed", reason="--dask needs distributed: pip install 'nucleiseg[dask]'")
cloudpickle = pytest.importorskip("cloudpickle")

import test_blocks  # noqa: E402  (the fake engine and files of the huge-image tests)

from nucleiseg.cli import main  # noqa: E402
from nucleiseg.inference.engines import Engine  # noqa: E402
from nucleiseg.integrations.dask import DaskRunner, EngineSpec, loads  # noqa: E402
from nucleiseg.pipeline.run import predict_files  # noqa: E402

# The workers are other processes: what they run from these test modules travels by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(test_blocks)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": ":0"}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name, image, _ in disk_samples(6, shape=(96, 96), seed=10):
        write_image(root / f"{name}.png", image)
    return root


@pytest.fixture(scope="module")
def local_run(folder, tmp_path_factory):
    """The same folder predicted here, without Dask (the bundled model)."""
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(["predict", str(folder), "--out", str(out)]) == 0
    return out


def same_outputs(out: Path, expected: Path) -> None:
    """Every file byte for byte, but summary.csv's seconds; no other files (partials)."""
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in expected.iterdir())
    for name in names:
        if name != "summary.csv":
            assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    assert without_seconds(out / "summary.csv") == without_seconds(expected / "summary.csv")


def without_seconds(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_predict_on_a_scheduler_equals_a_local_run_and_loads_the_model_once_per_worker(
        cluster, client, folder, local_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--dask",
                 cluster.scheduler_address]) == 0
    printed = capsys.readouterr().out
    assert "dask: 2 workers, 2 threads" in printed and "[6/6] img05.png" in printed
    same_outputs(out, local_run)
    per_worker = client.run(loads)
    assert all(count == 1 for counts in per_worker.values() for count in counts.values())
    assert sum(EngineSpec() in counts for counts in per_worker.values()) >= 1


@pytest.mark.slow
def test_local_cluster_resumes_and_overwrites_as_without_dask(folder, local_run, tmp_path,
                                                                capsys):
    out = tmp_path / "out"
    argv = ["predict", str(folder), "--out", str(out), "--dask", "local:2"]
    assert main(argv) == 0
    same_outputs(out, local_run)
    kept = (out / "img00_labels.tif").stat().st_mtime_ns
    (out / "img03_overlay.png").unlink()
    capsys.readouterr()
    assert main(argv) == 2  # outputs exist: neither --resume nor --overwrite
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before") == 5 and "[4/6] img03.png: " in printed
    assert (out / "img00_labels.tif").stat().st_mtime_ns == kept
    same_outputs(out, local_run)
    assert main([*argv, "--overwrite"]) == 0
    same_outputs(out, local_run)


# ---------------------------------------------------------------- faults on the workers


@dataclasses.dataclass(frozen=True)
class DyingOnce:
    """The bundled model, on workers whose first output rename anywhere kills the worker
    process (os._exit) after the file is written to its temporary name: a worker dies while
    it holds a task, with a half-finished output. `marker`: the file that says it happened."""

    marker: str

    def load(self):
        import nucleiseg.io.runfiles as io

        original = io.publish

        def publish(partial, path):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return original(partial, path)
            os._exit(1)

        io.publish = publish
        return EngineSpec().load()


def test_a_worker_killed_mid_image_loses_and_doubles_nothing(client, folder, local_run,
                                                             tmp_path, bundled_engine):
    marker = tmp_path / "died"
    model, record = bundled_engine
    out = tmp_path / "out"
    results = predict_files(model, record, [folder], out, progress=lambda _: None,
                            runner=DaskRunner(client, DyingOnce(str(marker))))
    assert marker.exists()  # a worker did die
    assert [r.image.name for r in results] == [f"img{i:02d}.png" for i in range(6)]
    assert not any(r.error for r in results)
    same_outputs(out, local_run)  # every output once, none half-written, no partials left
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the dead one


@dataclasses.dataclass(frozen=True)
class DiskFull:
    """The bundled model, on workers whose disk is full for one image's overlay."""

    name: str

    def load(self):
        import nucleiseg.io.runfiles as io

        original = io.publish

        def publish(partial, path):
            if Path(path).name == self.name:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(partial, path)

        io.publish = publish
        return EngineSpec().load()


def test_a_full_disk_on_a_worker_stops_the_run_naming_the_file(client, folder, tmp_path,
                                                                monkeypatch, bundled_engine):
    model, record = bundled_engine
    monkeypatch.chdir(tmp_path)  # the file is named as given, not as the workers saw it
    out = Path("out")
    with pytest.raises(OSError) as caught:
        predict_files(model, record, [folder], out, progress=lambda _: None,
                      runner=DaskRunner(client, DiskFull("img02_overlay.png")))
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(out / "img02_overlay.png")
    assert not (out / "summary.csv").exists() and not (out / ".nucleiseg.lock").exists()


# ---------------------------------------------------------------- one huge image, its blocks


@dataclasses.dataclass(frozen=True)
class Pointwise:
    """test_blocks' fake 3-class model (each pixel alone: blocks equal the whole image)."""

    def load(self):
        return Engine("pointwise", test_blocks.pointwise_logits, 3)


@pytest.mark.parametrize("kind", ["tiff", "ome-zarr"])
def test_a_huge_image_blocks_on_the_workers_stitch_to_the_local_labels(
        client, tmp_path, monkeypatch, kind):
    """Blocks segmented on the workers, stitched here: the local block-by-block labels,
    numbered the same, the same rows; and the whole image's nuclei."""
    import tifffile
    import zarr

    import nucleiseg.algorithms.blocks as blocks
    import nucleiseg.pipeline.one_file as one_file

    image = test_blocks.rgb_disks(seed=6)
    whole, expected = test_blocks.whole_image_outputs(tmp_path, image, monkeypatch)
    monkeypatch.setattr(blocks, "choose_core", lambda *args, **kwargs: 256)
    original = one_file.segment_large_file
    monkeypatch.setattr(one_file, "segment_large_file",
                        lambda *args, **kwargs: original(*args, **{**kwargs, "halo": 48}))

    def predict(out, runner=None):
        if kind == "tiff":
            source = test_blocks.write_pyramid(tmp_path / "slide.tif", image)
        else:
            source = test_blocks.write_ome_zarr(tmp_path / "slide.ome.zarr", image)
        results = predict_files(test_blocks.POINTWISE, {"config": test_blocks.CONFIG},
                                [source], out, options=test_blocks.OPTIONS,
                                progress=lambda _: None, runner=runner, overwrite=True,
                                blockwise_pixels=0)
        assert results[0].error is None
        if kind == "tiff":
            labels = tifffile.imread(out / "slide_labels.tif")
        else:
            labels = zarr.open_group(str(source), mode="r")["labels/nuclei/0"][0]
        return labels, (out / "measurements.csv").read_text()

    local_labels, local_rows = predict(tmp_path / "local")
    dask_labels, dask_rows = predict(tmp_path / "dask", DaskRunner(client, Pointwise()))
    assert np.array_equal(dask_labels, local_labels) and dask_rows == local_rows
    assert test_blocks.same_nuclei(dask_labels, whole) and dask_labels.max() == whole.max()
    rows = list(csv.DictReader(local_rows.splitlines()))
    test_blocks.assert_same_rows(rows, expected)


def test_a_local_cluster_that_does_not_start_is_one_line_naming_dask(folder, tmp_path, capsys,
                                                                    monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Cluster failed to start.\nTimed out trying to connect")

    monkeypatch.setattr(distributed, "LocalCluster", broken)
    code = main(["predict", str(folder), "--out", str(tmp_path / "out"), "--dask", "local:2"])
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1, error
    assert "--dask local:2: no local Dask cluster started (dask 20" in error
    assert "distributed 20" in error and "RuntimeError: Cluster failed to start. Timed" in error

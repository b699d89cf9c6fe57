"""A huge image's progress (nucleiseg.pipeline.progress) and the scale it is segmented at:
lines a person waiting on `predict` reads, on images and clocks made here."""

import csv
import io

import numpy as np
import pytest
from test_blocks import (  # the huge-image tests' fake engine, files and fixture
    CONFIG,
    InMemory,
    pointwise_logits,
    small_blocks,  # noqa: F401
    write_pyramid,
)

from nucleiseg.algorithms.preprocess import intensity_range
from nucleiseg.inference.engines import Engine
from nucleiseg.inference.predict import PredictOptions, segment_checked
from nucleiseg.pipeline.progress import SlideProgress, duration
from nucleiseg.pipeline.run import predict_files

pytest.importorskip("zarr")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_file_gets_a_line_every_tenth_of_the_blocks_or_every_30_seconds():
    stream, clock = io.StringIO(), Clock()
    progress = SlideProgress(stream, "slide.tif", (24000, 24000, 3), 100, 2048, 1.84,
                             unsure=True, live=False, clock=clock)
    for block in range(1, 101):
        clock.now += 1 if block != 55 else 40  # one slow block: a line 30 s after the last
        progress.block_done(nuclei=100 * block)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("slide.tif: 24000 x 24000 px, 100 blocks of up to 2048 px, scale 1.84 "
                        "(size check unsure)")
    assert [line.split(": ")[1].split(" ")[0] for line in lines[1:]] == [
        "10/100", "20/100", "30/100", "40/100", "50/100", "55/100", "60/100", "70/100",
        "80/100", "90/100", "100/100"]
    assert lines[1] == "slide.tif: 10/100 blocks, 1,000 nuclei, 10 s, about 1 min 30 s left"
    assert lines[-1] == "slide.tif: 100/100 blocks, 10,000 nuclei, 2 min 19 s"


def test_a_terminal_gets_one_line_updated_in_place():
    stream = io.StringIO()
    progress = SlideProgress(stream, "a.tif", (5000, 6000), 3, 2048, live=True, clock=Clock())
    for _ in range(3):
        progress.block_done(nuclei=7)
    first, rest = stream.getvalue().split("\n", 1)
    assert first == "a.tif: 6000 x 5000 px, 3 blocks of up to 2048 px, scale 1.00"
    updates = rest.split("\r")[1:]  # each padded to hide the longer line before it
    assert [update.rstrip() for update in updates][-1] == "a.tif: 3/3 blocks, 7 nuclei, 0 s"
    assert len(updates) == 3 and rest.endswith("\n") and rest.count("\n") == 1
    assert len(updates[2]) == len(updates[1]) + 1
    assert duration(3725) == "1 h 02 min" and duration(65) == "1 min 05 s"


def small_nuclei(shape=(600, 700), step=16, radius=3):
    """Grey uint8: disks about 6 px across on a regular grid."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    inside = ((yy % step - step // 2) ** 2 + (xx % step - step // 2) ** 2) <= radius**2
    return np.where(inside, 220, 20).astype(np.uint8)


def unsure_logits(tiles):
    """A fake model that finds the nuclei but is unsure of them: P(nucleus) 0.7 inside."""
    inside = tiles.mean(-1) > 0.5
    return np.stack([np.where(inside, 0.0, 3.0), np.where(inside, 0.85, -3.0),
                     np.full(inside.shape, -3.0)], -1)


AUTO = PredictOptions(tile=128, overlap=32, diameter="auto", training_diameter=30.0)


class Huge(InMemory):
    def intensity(self):
        return intensity_range(self.image)


def test_a_huge_image_is_upscaled_at_most_twice_where_an_image_read_whole_goes_to_4x():
    from nucleiseg.inference.blockwise import segment_blocks

    image = small_nuclei()[..., None]  # nuclei 6 px across, the model's are 30: 5x wanted
    sure = Engine("pointwise", pointwise_logits, 3)
    whole = segment_checked(sure, image, CONFIG, AUTO)[2]
    run = segment_blocks(Huge(image), sure, CONFIG, AUTO, core=256, halo=48)
    assert whole.scale == 4.0 and run.options.scale == 2.0 and not run.unsure
    assert "upscaling limited to 2.00x" in run.check["warning"]
    assert run.halo == 24 and sum(1 for _ in run.blocks) == run.count == 9


def test_an_unsure_scale_check_is_said_in_the_progress_and_the_summary(
        tmp_path, small_blocks):  # noqa: F811
    grey = small_nuclei()
    slide = write_pyramid(tmp_path / "slide.tif", np.stack([grey] * 3, -1))
    stream = io.StringIO()
    results = predict_files(Engine("unsure", unsure_logits, 3), {"config": CONFIG}, [slide],
                            tmp_path / "out", options=AUTO, progress=lambda _: None,
                            blockwise_pixels=0, block_progress=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("slide.tif: 700 x 600 px, ")
    assert lines[0].endswith("scale 1.41 (size check unsure)")
    blocks = int(lines[0].split(" blocks")[0].rsplit(" ", 1)[1])
    assert lines[-1].startswith(f"slide.tif: {blocks}/{blocks} blocks, "
                                f"{results[0].nuclei:,} nuclei, ")
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        summary = next(csv.DictReader(handle))
    assert float(summary["scale"]) == pytest.approx(2 ** 0.5, abs=1e-4)
    assert "first pass unsure" in summary["warning"]

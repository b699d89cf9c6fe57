"""Huge images block by block (algorithms.blocks): the stitched labels are the whole image's."""

import csv
import math

import numpy as np
import pytest

from nucleiseg.algorithms.blocks import (
    HALO,
    NucleusTable,
    Previews,
    block_geometry,
    choose_core,
    label_blocks,
    plan_blocks,
    stitch,
)
from nucleiseg.algorithms.instances import measure_nuclei
from nucleiseg.algorithms.preprocess import image_kind, intensity_range
from nucleiseg.errors import DataError
from nucleiseg.inference.blockwise import segment_block
from nucleiseg.inference.engines import Engine
from nucleiseg.inference.predict import PredictOptions, segment_image
from nucleiseg.pipeline.run import predict_files

zarr = pytest.importorskip("zarr")

OPTIONS = PredictOptions(tile=128, overlap=32)
CONFIG = {"sampling": "crops"}


def touching_disks(shape=(700, 900), count=260, seed=0):
    """Grey uint8: bright disks brightest at their centres, many touching or overlapping."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    value = np.zeros(shape)
    for _ in range(count):
        radius = rng.uniform(6, 14)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        value = np.maximum(value, np.clip(1 - distance / radius, 0, None))
    image = 20 + 200 * np.sqrt(value) + rng.normal(0, 3, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def pointwise_logits(tiles):
    """A fake 3-class model: background / interior / boundary from each pixel alone."""
    value = tiles.mean(-1)
    return np.stack([12 * (0.35 - value), 12 * (value - 0.8), np.zeros_like(value)], -1)


def blurred_logits(tiles):
    """A fake model that looks at its neighbours (a 7 x 7 mean): tiles see less context at
    their edges, as a real network does, so blocks and the whole image differ slightly."""
    from scipy import ndimage

    return pointwise_logits(ndimage.uniform_filter(tiles, size=(1, 7, 7, 1), mode="reflect"))


POINTWISE = Engine("pointwise", pointwise_logits, 3)


class InMemory:
    """label_blocks' view of an image held in memory."""

    def __init__(self, image):
        self.image, self.shape = image, image.shape

    def read(self, top, bottom, left, right):
        return self.image[top:bottom, left:right]


def stitched(image, engine, core=256, halo=48):
    intensity = intensity_range(image)
    table, previews = NucleusTable(), Previews.for_shape(image.shape, image.dtype)
    labels, rows = np.zeros(image.shape[:2], np.uint32), []

    def segment(window):
        return segment_block(window, engine, CONFIG, OPTIONS, None, intensity)

    for block, core_labels in label_blocks(InMemory(image), segment, core, halo, table,
                                           previews,
                                           on_row=lambda bottom: rows.extend(table.rows(bottom))):
        top, bottom, left, right = block.core
        labels[top:bottom, left:right] = core_labels
    rows.extend(table.rows())
    whole = segment_image(engine, image, CONFIG, OPTIONS, None, intensity)
    return labels, rows, previews, whole


def same_nuclei(a, b) -> bool:
    """The same nuclei (pixel for pixel), whatever their numbers."""
    if not np.array_equal(a > 0, b > 0):
        return False
    both = a > 0
    pairs = np.unique(np.stack([a[both], b[both]]), axis=1).shape[1]
    return pairs == len(np.unique(a[both])) == len(np.unique(b[both]))


def test_blocks_cover_the_image_once_and_the_core_fits_the_model_tiles():
    rows = plan_blocks(1000, 1300, 512, 64)
    covered = np.zeros((1000, 1300), int)
    for row in rows:
        for block in row:
            top, bottom, left, right = block.core
            covered[top:bottom, left:right] += 1
            wtop, wbottom, wleft, wright = block.window
            assert wtop == max(top - 64, 0) and wright == min(right + 64, 1300)
    assert (covered == 1).all() and (len(rows), len(rows[0])) == (2, 3)
    assert choose_core(512, 64, 128) % 256 == 0
    with pytest.raises(ValueError):
        plan_blocks(100, 100, 300, 64)


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.84, 4.0])
def test_blocks_of_an_upscaled_image_stay_within_the_pixels_of_unscaled_ones(scale):
    """The user's 24,000² slide at scale 1.84 had 4352² windows upscaled to 8008² (2.7 GB per
    block): cores shrink with the scale, the halo stays HALO pixels at the model's scale."""
    core, halo = block_geometry(scale, 512, 64, HALO, (24000, 24000))
    assert core % 256 == 0 and core >= halo and halo * scale >= HALO
    assert (core + 2 * halo) * scale <= 4096 + 2 * HALO  # the largest unscaled window
    if scale == 1.0:
        assert (core, halo) == (choose_core(512, 64, HALO, (24000, 24000)), HALO)
    assert block_geometry(scale, halo=48, core=512) == (512, math.ceil(48 / scale))


def test_stitched_labels_are_the_whole_image_labels_and_rows_its_rows():
    """Nuclei crossing seams are neither cut nor doubled: block by block gives exactly the
    whole image's nuclei (numbered 1..N once), and the same measurements."""
    image = touching_disks()[..., None]
    labels, rows, previews, whole = stitched(image, POINTWISE)
    assert whole.max() > 200
    assert same_nuclei(labels, whole)
    assert sorted(np.unique(labels[labels > 0])) == list(range(1, int(whole.max()) + 1))
    expected = measure_nuclei(labels.astype(np.int32), image)
    assert [row["label"] for row in rows] == [row["label"] for row in expected]
    for got, want in zip(rows, expected):
        assert all(math.isclose(got[key], want[key], rel_tol=1e-9, abs_tol=1e-9) for key in got)
    assert previews.step == 1 and np.array_equal(previews.labels, labels)


def test_with_a_model_that_sees_context_blocks_match_the_whole_image_closely():
    image = touching_disks(seed=1)[..., None]
    labels, _, _, whole = stitched(image, Engine("blurred", blurred_logits, 3))
    assert labels.max() == whole.max()
    overlap = np.zeros((int(labels.max()) + 1, int(whole.max()) + 1))
    np.add.at(overlap, (labels.ravel(), whole.ravel()), 1)
    sizes_a, sizes_b = overlap.sum(1), overlap.sum(0)
    iou = overlap / (sizes_a[:, None] + sizes_b[None, :] - overlap)
    assert (iou[1:, 1:].max(axis=1) >= 0.95).all()


def test_stitch_joins_by_majority_and_ignores_what_is_not_written_yet():
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0]])
    context = np.array([[7, 7, 9, 0], [7, 5, 9, -1], [-1, -1, -1, -1]])
    links = stitch(labels, context)
    assert links.tolist() == [[1, 7], [2, 9]]  # 3: nothing written under it; 2: 2 of 3 are 9
    assert stitch(labels, np.full(labels.shape, -1)).shape == (0, 2)


def test_previews_of_a_large_image_are_downsampled():
    previews = Previews.for_shape((10000, 6000, 3), np.uint8, side=4096)
    assert previews.step == 3 and previews.labels.shape == (3334, 2000)


# ---------------------------------------------------------------- files, end to end


def rgb_disks(seed=3):
    grey = touching_disks(seed=seed).astype(np.uint16)
    return np.stack([grey, grey * 3 // 4, grey // 2], -1).astype(np.uint8)


def he_disks(seed=3):
    """H&E-like colour uint8: purple disks on a near-white background."""
    grey = touching_disks(seed=seed).astype(np.float32)
    return np.stack([255 - grey * 0.45, 255 - grey * 0.8, 255 - grey * 0.35], -1).astype(np.uint8)


def write_pyramid(path, image, tile=128, levels=2):
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, tile=(tile, tile), subifds=levels, photometric="rgb",
                  compression="zlib")
        for level in range(1, levels + 1):
            step = 2**level
            tif.write(image[::step, ::step], tile=(tile, tile), subfiletype=1,
                      photometric="rgb", compression="zlib")
    return path


def write_ome_zarr(path, image, zarr_format=2, levels=2):
    """A small OME-Zarr image (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3), axes c, y, x."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    planes = np.moveaxis(image, -1, 0)
    names = {"dimension_names": ["c", "y", "x"]} if zarr_format == 3 else {}
    for level in range(levels):
        step = 2**level
        group.create_array(str(level), data=np.ascontiguousarray(planes[:, ::step, ::step]),
                           chunks=(planes.shape[0], 128, 128), **names)
    multiscale = {"name": path.stem, "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5 * 2**level, 0.5 * 2**level]}]}
            for level in range(levels)]}
    if zarr_format == 2:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    return path


@pytest.fixture
def small_blocks(monkeypatch):
    """Huge images in 256 px blocks with a 48 px halo (and predict_files(...,
    blockwise_pixels=0): every tiled TIFF goes block by block)."""
    import nucleiseg.algorithms.blocks as blocks
    import nucleiseg.pipeline.one_file as one_file

    monkeypatch.setattr(blocks, "choose_core", lambda *args, **kwargs: 256)
    original = one_file.segment_large_file

    def with_small_halo(*args, **kwargs):
        return original(*args, **{**kwargs, "halo": 48})

    monkeypatch.setattr(one_file, "segment_large_file", with_small_halo)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def whole_image_outputs(tmp_path, image, monkeypatch):
    import tifffile

    tifffile.imwrite(tmp_path / "whole.tif", image)
    predict_files(POINTWISE, {"config": CONFIG}, [tmp_path / "whole.tif"], tmp_path / "whole",
                  options=OPTIONS, progress=lambda _: None, blockwise_pixels=10**12)
    return (tifffile.imread(tmp_path / "whole" / "whole_labels.tif"),
            read_rows(tmp_path / "whole" / "measurements.csv"))


def assert_same_rows(rows, expected):
    assert len(rows) == len(expected)
    key = lambda row: (float(row["centroid_y"]), float(row["centroid_x"]))  # noqa: E731
    for got, want in zip(sorted(rows, key=key), sorted(expected, key=key)):
        for column in ("area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_max_x",
                       "eccentricity", "mean_intensity"):
            assert math.isclose(float(got[column]), float(want[column]), rel_tol=1e-9)


def test_tiled_pyramid_tiff_gives_a_tiled_bigtiff_and_the_whole_image_nuclei(
        tmp_path, small_blocks, monkeypatch):
    import imageio.v3 as iio
    import tifffile

    image = rgb_disks()
    whole, expected = whole_image_outputs(tmp_path, image, monkeypatch)
    slide = write_pyramid(tmp_path / "slide.tif", image)
    results = predict_files(POINTWISE, {"config": CONFIG}, [slide], tmp_path / "out",
                            options=OPTIONS, progress=lambda _: None,
                            blockwise_pixels=0)
    assert results[0].error is None and results[0].nuclei == whole.max() > 200
    with tifffile.TiffFile(tmp_path / "out" / "slide_labels.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.tile == (256, 256)
        labels = page.asarray()
    assert labels.dtype == np.uint32 and same_nuclei(labels, whole)
    rows = read_rows(tmp_path / "out" / "measurements.csv")
    assert [int(row["label"]) for row in rows] == list(range(1, int(whole.max()) + 1))
    assert_same_rows(rows, expected)
    assert iio.imread(tmp_path / "out" / "slide_overlay.png").shape == image.shape
    summary = read_rows(tmp_path / "out" / "summary.csv")
    assert summary[0]["nuclei"] == str(whole.max()) and summary[0]["error"] == ""
    again = predict_files(POINTWISE, {"config": CONFIG}, [slide], tmp_path / "out",
                          options=OPTIONS, progress=lambda _: None, resume=True,
                          blockwise_pixels=0)
    assert again[0].resumed and again[0].nuclei == whole.max()
    assert_same_rows(read_rows(tmp_path / "out" / "measurements.csv"), expected)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_gets_ngff_labels_beside_the_image(tmp_path, small_blocks, monkeypatch,
                                                    zarr_format):
    image = rgb_disks(seed=4)
    whole, expected = whole_image_outputs(tmp_path, image, monkeypatch)
    source = write_ome_zarr(tmp_path / "cells.ome.zarr", image, zarr_format)
    results = predict_files(POINTWISE, {"config": CONFIG}, [tmp_path], tmp_path / "out",
                            options=OPTIONS, progress=lambda _: None,
                            blockwise_pixels=0)
    by_name = {result.image.name: result for result in results}
    assert by_name["cells.ome.zarr"].nuclei == whole.max()
    group = zarr.open_group(str(source), mode="r")
    meta = group["labels/nuclei"].attrs.asdict()
    meta = meta.get("ome", meta)
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert [d["path"] for d in meta["multiscales"][0]["datasets"]] == ["0", "1"]
    listed = group["labels"].attrs.asdict()
    assert listed.get("ome", listed)["labels"] == ["nuclei"]
    labels = group["labels/nuclei/0"][:]
    assert labels.shape == (1, *image.shape[:2]) and same_nuclei(labels[0], whole)
    assert np.array_equal(group["labels/nuclei/1"][0], labels[0, ::2, ::2])
    assert (tmp_path / "out" / "cells_mask.png").exists()
    rows = [row for row in read_rows(tmp_path / "out" / "measurements.csv")
            if row["image"] == "cells.ome.zarr"]
    assert_same_rows(rows, expected)
    again = predict_files(POINTWISE, {"config": CONFIG}, [source], tmp_path / "out2",
                          options=OPTIONS, progress=lambda _: None, overwrite=True,
                          blockwise_pixels=0)
    assert again[0].nuclei == whole.max()
    assert sorted(p.name for p in (source / "labels").iterdir() if p.name.startswith("."))\
        in ([], [".zattrs"], [".zgroup"], [".zattrs", ".zgroup"])
    models = pytest.importorskip(f"ome_zarr_models.v0{4 if zarr_format == 2 else 5}")
    reopened = zarr.open_group(str(source), mode="r")  # the NGFF validator, where installed
    models.ImageLabel.from_zarr(reopened["labels/nuclei"])
    models.Image.from_zarr(reopened)


def test_bad_huge_files_are_one_line_errors_naming_the_file(tmp_path, small_blocks):
    slide = write_pyramid(tmp_path / "slide.tif", rgb_disks())
    data = slide.read_bytes()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(data[: len(data) * 2 // 3])  # the header is fine, the pixels are cut
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    bare = tmp_path / "bare.zarr"
    zarr.open_group(str(bare), mode="w", zarr_format=2)
    damaged = write_ome_zarr(tmp_path / "damaged.zarr", rgb_disks(seed=5), levels=1)
    for chunk in (damaged / "0").iterdir():
        if not chunk.name.startswith("."):
            chunk.write_bytes(b"not a chunk")
    inputs = [broken, empty, bare, damaged]
    results = predict_files(POINTWISE, {"config": CONFIG}, inputs, tmp_path / "out",
                            options=OPTIONS, progress=lambda _: None,
                            blockwise_pixels=0)
    for path, result in zip(inputs, results):
        assert result.error is not None and result.error.startswith(f"{path}: ")
        assert "\n" not in result.error
    assert "no multiscales" in results[2].error
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())
    assert not (damaged / "labels" / "nuclei").exists()


def test_only_images_read_whole_keep_the_pixel_limit(tmp_path, monkeypatch):
    import tifffile

    from nucleiseg.io.images import read_image
    from nucleiseg.io.wholeslide import is_large_input

    tiled, strips = tmp_path / "tiled.tif", tmp_path / "strips.tif"
    tifffile.imwrite(tiled, np.zeros((300, 300), np.uint8), tile=(128, 128))
    tifffile.imwrite(strips, np.zeros((300, 300), np.uint8))
    assert is_large_input(tiled, 200 * 200) and not is_large_input(strips, 200 * 200)
    with pytest.raises(DataError, match="header claims 300x300 pixels, more than the limit"):
        read_image(strips, max_pixels=200 * 200)


def test_a_huge_image_takes_the_postprocessing_of_its_kind_decided_once():
    from nucleiseg.algorithms.instances import InstanceOptions
    from nucleiseg.inference.blockwise import fix_scale, segment_blocks

    class CountingReads(InMemory):
        reads = 0

        def read(self, *window):
            CountingReads.reads += 1
            return super().read(*window)

    per_kind = InstanceOptions(min_size=5, by_kind={"histology": {"min_size": 10**6}})
    colour, grey = he_disks(), touching_disks()
    _, for_colour, _, check = fix_scale(CountingReads(colour), POINTWISE, CONFIG, OPTIONS,
                                     per_kind, intensity_range(colour))
    assert (for_colour.min_size, for_colour.by_kind, check) == (10**6, {}, None)
    assert CountingReads.reads == 1  # the central window only
    assert fix_scale(InMemory(grey), POINTWISE, CONFIG, OPTIONS, per_kind,
                     intensity_range(grey))[1].min_size == 5

    class WithIntensity(InMemory):
        def intensity(self):
            return intensity_range(self.image)

    def nuclei(image):
        run = segment_blocks(WithIntensity(image), POINTWISE, CONFIG, OPTIONS, per_kind, core=256,
                             halo=48)
        return sum(int(labels.max() > 0) for _, labels in run.blocks)

    assert nuclei(colour) == 0 and nuclei(grey) > 0  # every block with its image's options


def no_nuclei_logits(tiles):
    """A fake model that finds nothing."""
    return np.stack([np.full(tiles.shape[:3], 9.0, np.float32), *[np.zeros(tiles.shape[:3],
                     np.float32)] * 2], -1)


def test_colour_images_run_on_the_colour_engine_and_a_huge_one_decides_once():
    """The bundled models (Engine.colour): a colour image runs on the colour engine, a grey one
    on the other; a huge image's blocks all run on its central window's choice, also through
    wrappers (a lock, a counter) and on blocks segmented elsewhere (options.kind)."""
    import dataclasses

    from nucleiseg.inference.blockwise import fix_scale, segment_blocks

    routed = dataclasses.replace(POINTWISE, colour=Engine("nothing", no_nuclei_logits, 3))
    colour, grey = he_disks(), touching_disks()
    assert segment_image(POINTWISE, colour, CONFIG, OPTIONS).max() > 0  # colour alone finds
    assert segment_image(routed, colour, CONFIG, OPTIONS).max() == 0
    assert segment_image(routed, grey, CONFIG, OPTIONS).max() > 0
    calls = []

    def counted(predict_logits):
        return lambda tiles: calls.append(len(tiles)) or predict_logits(tiles)

    wrapped = routed.wrapped(counted)
    assert segment_image(wrapped, colour, CONFIG, OPTIONS).max() == 0 and calls

    class WithIntensity(InMemory):
        def intensity(self):
            return intensity_range(self.image)

    options = fix_scale(InMemory(colour), routed, CONFIG, OPTIONS, None,
                        intensity_range(colour))[0]
    assert options.kind == "histology"
    mixed = np.repeat(255 - grey[..., None], 3, -1)  # grey (bright-field) but for its centre
    mixed[250:450, 350:550] = colour[250:450, 350:550]
    assert segment_image(routed, mixed[:256, :256], CONFIG, OPTIONS).max() > 0  # a grey corner
    run = segment_blocks(WithIntensity(mixed), routed, CONFIG, OPTIONS, None, core=256, halo=48)
    assert all(labels.max() == 0 for _, labels in run.blocks)  # its blocks: the colour engine
    assert segment_blocks(WithIntensity(grey), routed, CONFIG, OPTIONS, None, core=256,
                          halo=48).options.kind == "fluorescence"


def test_colour_images_read_whole_get_test_time_augmentation_on_the_bundled_models():
    """H&E read whole on the bundled models (Engine.colour) averages 4 views; a huge one read
    block by block does not; a model without a colour engine follows `tta` alone."""
    import dataclasses

    from nucleiseg.inference.blockwise import segment_blocks

    seen = []

    def counted(tiles):
        seen.append(len(tiles))
        return pointwise_logits(tiles)

    routed = Engine("general", pointwise_logits, 3, colour=Engine("he", counted, 3))
    image = he_disks()[:256, :256]
    segment_image(routed, image, CONFIG, OPTIONS)
    with_tta = sum(seen)
    seen.clear()
    segment_image(routed, image, CONFIG, dataclasses.replace(OPTIONS, colour_tta=1))
    assert with_tta == 4 * sum(seen) > 0
    seen.clear()
    segment_image(Engine("he", counted, 3), image, CONFIG, OPTIONS)  # one model: no colour TTA
    assert with_tta == 4 * sum(seen)

    class WithIntensity(InMemory):
        def intensity(self):
            return intensity_range(self.image)

    seen.clear()
    run = segment_blocks(WithIntensity(image), routed, CONFIG, OPTIONS, None, core=256, halo=48)
    list(run.blocks)
    assert run.options.colour_tta == 1 and sum(seen) == with_tta // 4


def test_colour_fluorescence_runs_on_the_general_engine_as_grey():
    """A colour composite on a dark background (blue DAPI, or with a dim second stain) is
    fluorescence: the bundled general engine gets it as grey (its brightest channel), as it
    gets a grey image; a huge one's blocks too, with the grey's intensity range."""
    import dataclasses

    from nucleiseg.inference.blockwise import segment_blocks

    seen = []

    def recorded(tiles):
        seen.append(tiles)
        return pointwise_logits(tiles)

    routed = Engine("general", recorded, 3, colour=Engine("nothing", no_nuclei_logits, 3))
    grey = touching_disks()
    composite = np.zeros((*grey.shape, 3), np.uint8)
    composite[..., 2], composite[..., 1] = grey, grey // 3
    assert image_kind(composite) == "fluorescence"
    labels = segment_image(routed, composite, CONFIG, OPTIONS)
    assert all(np.array_equal(t[..., 0], t[..., 2]) for t in seen) and labels.max() > 0
    assert same_nuclei(labels, segment_image(POINTWISE, grey, CONFIG, OPTIONS))

    class WithIntensity(InMemory):
        def intensity(self):
            return intensity_range(self.image)  # of the colour image, as a slide's sample

    run = segment_blocks(WithIntensity(composite), dataclasses.replace(routed), CONFIG,
                         OPTIONS, None, core=256, halo=48)
    blocks = np.zeros(grey.shape, np.uint32)
    for block, core_labels in run.blocks:
        top, bottom, left, right = block.core
        blocks[top:bottom, left:right] = core_labels
    assert run.options.kind == "fluorescence" and run.intensity == intensity_range(grey)
    assert same_nuclei(blocks, labels)


def test_a_huge_colour_image_is_stain_matched_once_so_blocks_match_the_whole_image():
    """The stain match (and the matched intensity range) is decided on the central window and
    used by every block: with a model that sees each pixel alone, block by block gives the
    whole image's nuclei (this image is smaller than the window: the same statistics)."""
    import dataclasses

    from nucleiseg.algorithms.stain import StainReference
    from nucleiseg.inference.blockwise import segment_blocks

    class WithIntensity(InMemory):
        def intensity(self):
            return intensity_range(self.image)

    image = he_disks()
    reference = StainReference((60.0, 20.0, -15.0), (25.0, 10.0, 8.0))
    options = dataclasses.replace(OPTIONS, stain_reference=reference)
    run = segment_blocks(WithIntensity(image), POINTWISE, CONFIG, options, core=256, halo=48)
    labels = np.zeros(image.shape[:2], np.uint32)
    for block, core_labels in run.blocks:
        top, bottom, left, right = block.core
        labels[top:bottom, left:right] = core_labels
    assert run.options.stain is not None and run.options.stain.target == reference
    whole = segment_image(POINTWISE, image, CONFIG, options)
    assert same_nuclei(labels, whole) and labels.max() > 0
    plain = segment_image(POINTWISE, image, CONFIG, OPTIONS)
    assert not same_nuclei(plain, whole)  # the match changed what the model saw

import imageio.v3 as iio
import numpy as np
from conftest import make_disks

from nucleiseg.algorithms.preprocess import intensity_range, normalize_image
from nucleiseg.render import display, outline_overlay, pick_examples, plot_curves, prediction_grid


def test_figures_are_written_as_png_files(tmp_path):
    image, labels = make_disks(seed=1)
    display([normalize_image(image), labels > 0, labels > 0], tmp_path / "one.png")
    prediction_grid([normalize_image(image)] * 2, [labels] * 2, [labels > 0] * 2,
                    tmp_path / "grid.png", names=["a", "b"])
    plot_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.8, 0.9]},
                tmp_path / "curves.png")
    for name in ("one.png", "grid.png", "curves.png"):
        assert iio.imread(tmp_path / name).ndim == 3


def test_overlay_draws_outlines_only():
    image, labels = make_disks(seed=2)
    out = outline_overlay(image, labels, *intensity_range(image))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    red = np.all(out == [255, 51, 51], axis=-1)
    assert red.any() and not red[labels == 0].any()  # inner outlines, inside the nuclei
    assert red.sum() < (labels > 0).sum()
    grey = np.round(normalize_image(image) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[~red], grey[~red])  # the image itself, normalised
    # Built in strips of 5 rows, it is the same picture.
    np.testing.assert_array_equal(outline_overlay(image, labels, *intensity_range(image), rows=5),
                                  out)


def test_overlay_draws_cells_in_yellow_under_the_nuclei():
    from nucleiseg.algorithms.cells import expand_nuclei

    image, labels = make_disks(seed=2)
    cells = expand_nuclei(labels, 3)
    out = outline_overlay(image, labels, *intensity_range(image), cells=cells)
    yellow = np.all(out == [255, 220, 0], axis=-1)
    red = np.all(out == [255, 51, 51], axis=-1)
    assert yellow.any() and not yellow[cells == 0].any()
    assert (yellow & (labels == 0)).any()  # the cell edges lie outside the nuclei
    np.testing.assert_array_equal(red, np.all(
        outline_overlay(image, labels, *intensity_range(image)) == [255, 51, 51], axis=-1))


def test_overlay_outlines_are_green_on_colour_images():
    image, labels = make_disks(seed=2)
    grey = np.round(normalize_image(image) * 255).astype(np.uint8)
    grey = grey.reshape(grey.shape[:2] + (-1,))[..., 0]
    colour = np.stack([grey, grey // 2, grey // 3 + 60], -1)  # pink / purple, as H&E
    out = outline_overlay(colour, labels, *intensity_range(colour))
    green = np.all(out == [40, 255, 40], axis=-1)
    assert green.any() and not np.all(out == [255, 51, 51], axis=-1).any()


def test_examples_show_one_image_of_each_kind_first():
    assert pick_examples(["fluo", "fluo", "histo", "fluo", "bright"]) == [0, 2, 4]
    assert pick_examples(["fluo", "fluo"]) == [0, 1]
    assert pick_examples(["fluo"] * 5, count=4) == [0, 1, 2, 3]


def test_inner_outlines_are_scikit_image_inner_boundaries():
    from skimage.segmentation import find_boundaries

    from nucleiseg.render import inner_outlines

    _, labels = make_disks((90, 70), seed=5)
    labels[40:45, :] = 7  # a band touching the edges and other nuclei
    np.testing.assert_array_equal(inner_outlines(labels), find_boundaries(labels, mode="inner"))

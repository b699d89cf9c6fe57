"""Figures, written straight to PNG files (matplotlib's Agg canvas: no windows, ever).

matplotlib is imported here only, inside the functions that draw, and is optional (the
'plots' extra): prediction never needs it, training without it writes no figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.errors import UsageError

DEFAULT_TITLES = ("Input image", "True mask", "Predicted mask")
INSTALL_PLOTS = "pip install 'nucleiseg[plots]'"


def can_draw() -> bool:
    """Whether matplotlib (the 'plots' extra) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_plots(what: str) -> None:
    """Refuse, before any work, an option whose output is a figure when matplotlib is absent."""
    if not can_draw():
        raise UsageError(f"{what} draws a figure, which needs matplotlib: {INSTALL_PLOTS}")


def _figure(rows: int, cols: int, size: float = 2.6):
    require_plots("this command")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(cols * size, rows * size))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return figure, axes


def _save(figure, path: Path) -> None:
    from nucleiseg.io.runfiles import atomic_write

    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, dpi=80, format="png"))


def _show(ax, array, title=None):
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        ax.imshow(array, cmap="gray", interpolation="nearest")
    else:
        ax.imshow(np.clip(array, 0, 1), interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)


def image_grid(rows, path: Path, titles=DEFAULT_TITLES, names=None) -> None:
    """Rows of images side by side (titles on the first row), written to `path`."""
    rows = [list(row) for row in rows]
    figure, axes = _figure(len(rows), max(len(row) for row in rows))
    for index, row in enumerate(rows):
        for col, array in enumerate(row):
            title = [titles[col]] if index == 0 and titles else []
            if col == 0 and names is not None:
                title.append(str(names[index])[:28])
            _show(axes[index][col], array, "\n".join(title) or None)
    _save(figure, path)


def pick_examples(kinds, count: int = 3) -> list[int]:
    """Indices of up to `count` images to show: the first of each image kind, then the rest."""
    firsts = [kinds.index(kind) for kind in dict.fromkeys(kinds)]
    rest = [index for index in range(len(kinds)) if index not in firsts]
    return sorted((firsts + rest)[:count])


def display(display_list, path: Path, titles=DEFAULT_TITLES) -> None:
    """One row: input image, true mask, predicted mask (the original's `display`), to a file."""
    image_grid([display_list], path, titles)


def prediction_grid(images, true_masks, pred_masks, path: Path, names=None) -> None:
    """One row of input / true mask / predicted mask per image."""
    image_grid(zip(images, true_masks, pred_masks), path, DEFAULT_TITLES, names)


def plot_curves(history: dict, path: Path) -> None:
    """Loss, pixel accuracy and foreground IoU per epoch, training and validation."""
    panels = [("loss", "Loss"), ("accuracy", "Pixel accuracy"),
              ("foreground_iou", "Foreground IoU")]
    figure, axes = _figure(1, len(panels), size=3.4)
    for ax, (key, title) in zip(axes[0], panels):
        ax.axis("on")
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        if ax.get_lines():
            ax.legend(fontsize=8)
    _save(figure, path)


def sample_grid(images, labels, path: Path, names=None, kinds=None) -> None:
    """EDA grid: each image above its labelled nuclei (random colours)."""
    from skimage.color import label2rgb

    cols = len(images)
    figure, axes = _figure(2, cols)
    for col, (image, label) in enumerate(zip(images, labels)):
        title = None
        if names is not None:
            title = str(names[col])[:14] + (f"\n{kinds[col]}" if kinds is not None else "")
        _show(axes[0][col], image, title)
        _show(axes[1][col], label2rgb(label, bg_label=0), f"{label.max()} nuclei")
    _save(figure, path)


OUTLINE_ON_GREY = (255, 51, 51)  # red: stands out on grey fluorescence and bright-field
OUTLINE_ON_COLOUR = (40, 255, 40)  # green: red is lost on pink and purple H&E
CELL_OUTLINE = (255, 220, 0)  # yellow, for the cells around the nuclei


def outline_overlay(image: np.ndarray, labels: np.ndarray, low: float, high: float,
                    colour=None, rows: int = 512, cells: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB of a raw image (mapped from [low, high] as in normalisation) with the outline
    of every labelled nucleus drawn (`colour`, default by the image's kind) and, with `cells`
    (same shape), of every cell (CELL_OUTLINE, under the nuclei's), built strip by strip: no
    image-sized float arrays."""
    from nucleiseg.algorithms.preprocess import (
        apply_intensity_range,
        image_kind,
        intensity_table,
        to_rgb,
    )

    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    if colour is None:
        step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 1e6)))
        colour = (OUTLINE_ON_COLOUR if image_kind(image[::step, ::step]) == "histology"
                  else OUTLINE_ON_GREY)
    table = (np.round(intensity_table(image.dtype, low, high) * 255).astype(np.uint8)
             if image.dtype in (np.uint8, np.uint16) else None)  # 8/16-bit: by look-up
    height = labels.shape[0]
    out = np.empty((*labels.shape, 3), np.uint8)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        above, below = max(top - 1, 0), min(bottom + 1, height)  # outlines need a neighbour row
        if table is not None:
            out[top:bottom] = table[to_rgb(image[top:bottom])]
        else:
            strip = apply_intensity_range(image[top:bottom], low, high)
            out[top:bottom] = np.round(strip * 255).astype(np.uint8)
        if cells is not None:
            edge = inner_outlines(cells[above:below])[top - above:top - above + bottom - top]
            out[top:bottom][edge] = CELL_OUTLINE
        outline = inner_outlines(labels[above:below])[top - above:top - above + bottom - top]
        out[top:bottom][outline] = colour
    return out


def inner_outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus with a 4-neighbour of another value: scikit-image's
    find_boundaries(mode="inner"), by comparing shifted arrays (several times faster)."""
    edge = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge &= labels != 0
    return edge

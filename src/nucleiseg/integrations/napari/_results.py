"""Between napari layers and the computation, without Qt: what to segment in an Image layer,
and the layers a result becomes (a napari ViewerModel is enough, so tests need no display)."""

from __future__ import annotations

import numpy as np

MAX_POINTS = 200_000  # more centroids than this slow napari down: no Points layer then


def layer_inputs(layer) -> dict:
    """segment_layer_data's keyword arguments for an Image layer: its data (level 0 and the
    lower levels of a multiscale layer), whether it is RGB, its pixel size (from the reader)."""
    if layer.multiscale:
        data, levels = layer.data[0], list(layer.data[1:])
    else:
        data, levels = layer.data, None
    return {"data": data, "levels": levels, "rgb": bool(layer.rgb),
            "pixel_size": layer.metadata.get("pixel_size_um")}


def channel_choices(layer) -> list[tuple[str, int | None]]:
    """(label, channel) choices for a layer: colours of an RGB layer, the first axis of a
    layer of 3 or more dimensions (a multi-channel layer; none: every plane is segmented)."""
    if layer is None:
        return [("grey", None)]
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    if layer.rgb:
        names = ("red", "green", "blue", "alpha")
        return [("colour (as is)", None)] + [(f"{i} ({names[i]})", i)
                                             for i in range(shape[-1])]
    if len(shape) >= 3:
        return [("none: segment every plane", None)] + [(f"{i} of axis 0", i)
                                                        for i in range(shape[0])]
    return [("grey", None)]


def result_layer_name(image_name: str) -> str:
    return f"{image_name} nuclei"


def grow_cells(labels: np.ndarray, distance: float) -> np.ndarray:
    """Cells grown from the nuclei of each plane (the last two axes) by up to `distance` px,
    with the nuclei's ids (nucleiseg.algorithms.cells.expand_nuclei, as `predict --cells`)."""
    from nucleiseg.algorithms.cells import expand_nuclei

    cells = np.empty_like(labels)
    for plane in np.ndindex(labels.shape[:-2]):
        cells[plane] = expand_nuclei(labels[plane], distance)
    return cells


def add_result_layers(viewer, layer, result, channel: int | None = None,
                      cells: np.ndarray | None = None) -> list:
    """Add (or update, on a second run) the Labels layer '<image> nuclei' with the
    measurements as features, a Points layer '<image> centroids' at the nuclei's centroids
    and, with `cells` (grow_cells), a Labels layer '<image> cells'; all on the image's scale
    and position. Returns the layers."""
    name = result_layer_name(layer.name)
    dims = result.labels.ndim
    placing = {"scale": tuple(layer.scale)[-dims:], "translate": tuple(layer.translate)[-dims:]}
    features = result.features
    if name in viewer.layers:
        labels_layer = viewer.layers[name]
        labels_layer.data = result.labels
        labels_layer.features = features
    else:
        labels_layer = viewer.add_labels(result.labels, name=name, features=features,
                                         opacity=0.5, **placing)
    labels_layer.metadata["nucleiseg"] = {"checks": result.checks, "channel": channel}
    layers = [labels_layer]
    cells_name = f"{layer.name} cells"
    if cells_name in viewer.layers:
        viewer.layers.remove(cells_name)
    if cells is not None:  # below the nuclei, so both show
        layers.append(viewer.add_labels(cells, name=cells_name, opacity=0.3, **placing))
        viewer.layers.move(viewer.layers.index(cells_name), viewer.layers.index(name))
    points_name = f"{layer.name} centroids"
    if points_name in viewer.layers:
        viewer.layers.remove(points_name)
    if 0 < result.count <= MAX_POINTS:
        centroids = np.column_stack([features["centroid_y"], features["centroid_x"]])
        if dims > 2:  # a stack: the plane's indices first
            planes = np.array(np.unravel_index(features["plane"], result.labels.shape[:-2])).T
            centroids = np.column_stack([planes, centroids])
        point_features = {"label": features["index"], "area": features["area"]}
        layers.append(viewer.add_points(centroids, name=points_name, size=3,
                                        face_color="yellow", border_width=0,
                                        features=point_features, **placing))
    show_count(viewer, f"{layer.name}: {result.count} nuclei")
    return layers


def show_count(viewer, text: str) -> None:
    """The count as the canvas's text overlay (napari >= 0.9: viewer.canvas.overlays.text;
    before: viewer.text_overlay)."""
    canvas = getattr(viewer, "canvas", None)
    overlay = getattr(getattr(canvas, "overlays", None), "text", None)
    if overlay is None:
        overlay = getattr(viewer, "text_overlay", None)
    if overlay is not None:
        overlay.text = text
        overlay.visible = True

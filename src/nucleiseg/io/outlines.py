"""Nuclei as outlines for QuPath and Fiji: a GeoJSON file of detections and an ImageJ ROI set.

Every nucleus is traced along its pixel edges. Coordinates are image pixels, x to the right and
y down, with pixel corners at whole numbers: the pixel in row r, column c covers x in [c, c+1]
and y in [r, r+1] (QuPath's and ImageJ's convention). An outline therefore encloses exactly the
nucleus's pixels: rasterising it back, a pixel inside when its centre is, gives the labels again.
Only corners are kept (a straight run of edges is one segment).

A nucleus is one polygon, its exterior ring followed by the rings of any holes (with
`--no-fill-holes`); a label whose pixels fall apart into pieces that touch at most at a corner
is one polygon per piece (a GeoJSON MultiPolygon). Exterior rings run counterclockwise and holes
clockwise with y pointing up (GeoJSON's right-hand rule; in the image, with y down, they look
the other way round).

Both files are written nucleus by nucleus to a partial file renamed into place when complete
(GeoJsonFile, RoiZip): a huge image's outlines (OutlineFiles) come as its blocks are done, in
memory bounded by the blocks, and are the same as for the image read whole.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np

from nucleiseg.io.runfiles import PartialFile, naming_full_disk

EXPORTS = ("geojson", "imagej-rois")  # predict --geojson, --imagej-rois
EXPORT_FILES = {"geojson": "{stem}.geojson", "imagej-rois": "{stem}_rois.zip"}
NUCLEUS_CLASS = {"name": "Nucleus", "color": [0, 170, 255]}  # QuPath's classification object
NOT_MEASUREMENTS = ("label", "plane", "t", "z", "image")  # row columns written as properties

# Edge directions, as (dx, dy): +x, +y, -x, -y. A turn by +1 is clockwise on screen (y down).
STEPS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)])


def trace_rings(mask: np.ndarray) -> list[np.ndarray]:
    """The closed outlines of a 2-D boolean mask along its pixel edges: a list of (n, 2) int
    arrays of (x, y) corners (the first corner not repeated at the end), in the mask's own
    coordinates. Each ring keeps the mask on its right on screen (y down): exteriors have a
    positive signed area, holes a negative one (`signed_area`). Where two mask pixels touch only
    at a corner, the outline passes from one to the other there, so a 4-connected mask has one
    exterior ring and no ring touches itself."""
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    padded = np.pad(mask, 1)
    outside = {0: ~padded[:-2, 1:-1], 1: ~padded[1:-1, 2:], 2: ~padded[2:, 1:-1],
               3: ~padded[1:-1, :-2]}  # the neighbour above, right, below, left
    corner = {0: (0, 0), 1: (1, 0), 2: (1, 1), 3: (0, 1)}  # where each side's edge starts
    xs, ys, ds = [], [], []
    for direction in range(4):  # top edges first: edge 0 is the top of the first pixel
        rows, cols = np.nonzero(mask & outside[direction])
        xs.append(cols + corner[direction][0])
        ys.append(rows + corner[direction][1])
        ds.append(np.full(len(rows), direction))
    x, y, d = np.concatenate(xs), np.concatenate(ys), np.concatenate(ds)
    if not len(x):
        return []
    stride = width + 2
    start = y * stride + x
    end = (y + STEPS[d, 1]) * stride + x + STEPS[d, 0]
    order = np.argsort(start, kind="stable")
    first = np.searchsorted(start[order], end, "left")
    count = np.searchsorted(start[order], end, "right") - first
    following = order[first]
    # Two edges leave a corner where two pixels touch diagonally: take the one that turns
    # counterclockwise on screen, into the other pixel (it is the next one in sorted order
    # otherwise).
    pinch = np.flatnonzero(count == 2)
    if len(pinch):
        second = order[first[pinch] + 1]
        use_second = d[second] == (d[pinch] + 3) % 4
        following[pinch[use_second]] = second[use_second]
    rings = []
    seen = np.zeros(len(x), bool)
    following = following.tolist()
    for begin in range(len(x)):
        if seen[begin]:
            continue
        edges = []
        edge = begin
        while not seen[edge]:
            seen[edge] = True
            edges.append(edge)
            edge = following[edge]
        edges = np.array(edges)
        turns = d[edges] != np.roll(d[edges], 1)  # keep corners only
        rings.append(np.stack([x[edges][turns], y[edges][turns]], axis=1))
    return rings


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring of (x, y) corners: positive for exteriors (trace_rings)."""
    x, y = np.asarray(ring, np.float64).T
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def mask_polygons(mask: np.ndarray, corner: tuple[int, int] = (0, 0)
                  ) -> list[list[np.ndarray]]:
    """One nucleus as polygons along its pixel edges: [polygon, ...], a polygon being
    [exterior ring, *hole rings], a ring an (n, 2) int array of (x, y) pixel corners. `mask`:
    the nucleus's pixels over its bounding box, whose top-left pixel is image pixel `corner`
    (row, column). One polygon per 4-connected piece (one for a nucleus of the usual kind), in
    raster order."""
    from scipy import ndimage

    offset = np.array([corner[1], corner[0]])
    pieces, count = ndimage.label(mask)
    polygons = []
    for piece in range(1, count + 1):
        rings = trace_rings(mask if count == 1 else pieces == piece)
        exterior = [ring for ring in rings if signed_area(ring) > 0]
        holes = [ring for ring in rings if signed_area(ring) < 0]
        polygons.append([ring + offset for ring in exterior + holes])
    return polygons


def outline_polygons(labels: np.ndarray) -> dict[int, list[list[np.ndarray]]]:
    """Every nucleus of a 2-D label image (0 = background) as mask_polygons in image
    coordinates: {label: [polygon, ...]}, labels in increasing order."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {labels.shape}")
    return {label: mask_polygons(labels[box] == label, (box[0].start, box[1].start))
            for label, box in enumerate(ndimage.find_objects(labels), start=1)
            if box is not None}


# ---------------------------------------------------------------- GeoJSON (QuPath)


def closed(ring: np.ndarray) -> list[list[int]]:
    """A ring as GeoJSON wants it: a list of [x, y], the first position repeated at the end."""
    positions = np.asarray(ring).tolist()
    return positions + positions[:1]


def geojson_geometry(polygons: list[list[np.ndarray]], plane: dict | None = None) -> dict:
    """A Polygon (one piece) or MultiPolygon; `plane` ({"c", "z", "t"}, 0-based) is QuPath's
    own member saying which plane of a stack the outline lies in."""
    coordinates = [[closed(ring) for ring in polygon] for polygon in polygons]
    geometry = ({"type": "Polygon", "coordinates": coordinates[0]} if len(coordinates) == 1 else
                {"type": "MultiPolygon", "coordinates": coordinates})
    if plane is not None:
        geometry["plane"] = plane
    return geometry


def measurement_values(row: dict) -> dict:
    """The numeric measurements of a measurements.csv row (not its label and plane columns,
    nor values that are empty or not finite)."""
    values = {}
    for key, value in row.items():
        if key in NOT_MEASUREMENTS or isinstance(value, (str, bool)) or value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            values[key] = int(value) if value.is_integer() and abs(value) < 2**53 else value
    return values


def nucleus_feature(label: int, polygons: list[list[np.ndarray]], row: dict | None = None,
                    where: dict | None = None) -> dict:
    """The GeoJSON Feature of one nucleus, as QuPath reads it: objectType "detection", name =
    the label, classification "Nucleus", measurements = its measurement row's numbers (none
    without `row`), and the label itself. `where`: a stack plane's {"plane", "t", "z"} (the
    measurement columns; "" where the file has no such axis), added to the properties and as
    the geometry's QuPath plane."""
    plane = None
    extra = {}
    if where is not None and where.get("plane", "") != "":
        extra = {key: int(where[key]) for key in ("plane", "t", "z") if where.get(key, "") != ""}
        plane = {"c": -1, "z": extra.get("z", 0), "t": extra.get("t", 0)}
    properties = {"objectType": "detection", "name": str(label),
                  "classification": NUCLEUS_CLASS, "label": label, **extra,
                  "measurements": measurement_values(row or {})}
    return {"type": "Feature", "geometry": geojson_geometry(polygons, plane),
            "properties": properties}


def nucleus_features(labels: np.ndarray, rows=(), where: dict | None = None) -> list[dict]:
    """nucleus_feature of every nucleus of a 2-D label image, in label order; `rows`:
    measure_nuclei rows, or measurements.csv rows, matched by "label"."""
    by_label = {int(row["label"]): row for row in rows}
    return [nucleus_feature(label, polygons, by_label.get(label), where)
            for label, polygons in outline_polygons(labels).items()]


class GeoJsonFile:
    """A GeoJSON FeatureCollection written Feature by Feature, one per line, to a partial file
    (io.runfiles.PartialFile) that `commit` completes and renames into place: memory stays flat
    over any number of nuclei, and the file is valid JSON once it is there."""

    HEADER, FOOTER = '{"type":"FeatureCollection","features":[\n', "]}\n"

    def __init__(self, path: Path):
        self.file = PartialFile(path)
        self.count = 0
        self.file.write(self.HEADER)

    def add(self, feature: dict) -> None:
        text = json.dumps(feature, separators=(",", ":"), allow_nan=False)
        self.file.write((",\n" if self.count else "") + text)
        self.count += 1

    def commit(self) -> None:
        self.file.write(("\n" if self.count else "") + self.FOOTER)
        self.file.commit()

    def discard(self) -> None:
        self.file.discard()


def write_geojson(path: Path, features) -> None:
    """A GeoJSON FeatureCollection, one Feature per line, written atomically."""
    collection = GeoJsonFile(path)
    try:
        for feature in features:
            collection.add(feature)
        collection.commit()
    except BaseException:
        collection.discard()
        raise


# ---------------------------------------------------------------- ImageJ ROI set (Fiji)


def imagej_roi(polygons: list[list[np.ndarray]], name: str, position: int = 0):
    """One roifile.ImagejRoi: a traced polygon (ImageJ's type for outlines along pixel edges,
    as the wand tool makes) for a nucleus of one piece without holes, else a composite shape
    whose rings ImageJ fills even-odd (holes stay empty). `position`: the 1-based stack slice
    (0: not set)."""
    import roifile

    rings = [ring for polygon in polygons for ring in polygon]
    corners = np.concatenate(rings)
    low, high = corners.min(axis=0), corners.max(axis=0)
    large = bool(high.max() > 30000)  # ImageJ keeps integer coordinates in 16 bits
    if len(rings) == 1:
        roi = roifile.ImagejRoi.frompoints(rings[0].astype(np.float32 if large else np.int32),
                                           name=name)
        roi.roitype = roifile.ROI_TYPE.TRACED
        roi.options &= roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION  # not frompoints' overlay flags
    else:
        path = []
        for ring in rings:
            (x0, y0), *rest = ring.tolist()
            path += [0, x0, y0]  # MOVETO
            for px, py in rest:
                path += [1, px, py]  # LINETO
            path.append(4)  # CLOSE
        roi = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, name=name)
        roi.multi_coordinates = np.array(path, np.float32)
        roi.shape_roi_size = len(path)
    roi.left, roi.top = (int(v) for v in low)
    roi.right, roi.bottom = (int(v) for v in high)
    roi.position = position
    return roi


def imagej_rois(labels: np.ndarray, position: int = 0) -> list:
    """ImageJ ROIs of a 2-D label image, one per nucleus in label order, each named by its
    label (with the slice in front, "0003-12", for a plane of a stack: `position` >= 1)."""
    return [imagej_roi(polygons, f"{position:04d}-{label}" if position else str(label),
                       position)
            for label, polygons in outline_polygons(labels).items()]


class RoiZip:
    """An ImageJ ROI set (a ZIP of .roi files, as Fiji's ROI Manager saves) written ROI by ROI
    to a partial file that `commit` renames into place. Past 65,535 ROIs the ZIP is a ZIP64
    (zipfile switches by itself; Fiji reads it)."""

    def __init__(self, path: Path):
        import zipfile

        self.file = PartialFile(path, binary=True)
        self.archive = zipfile.ZipFile(self.file.handle, "w", zipfile.ZIP_DEFLATED)

    def add(self, roi) -> None:
        with naming_full_disk(self.file.path):
            self.archive.writestr(f"{roi.name}.roi", roi.tobytes())

    def commit(self) -> None:
        with naming_full_disk(self.file.path):
            self.archive.close()
        self.file.commit()

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # the ZIP's central directory is not wanted
            self.archive.close()
        self.file.discard()


def write_imagej_rois(path: Path, rois) -> None:
    """An ImageJ ROI set written atomically; an image without nuclei gives an empty set."""
    archive = RoiZip(path)
    try:
        for roi in rois:
            archive.add(roi)
        archive.commit()
    except BaseException:
        archive.discard()
        raise


class OutlineFiles:
    """The outline exports among `paths` ("geojson", "imagej-rois") of a huge image, written
    nucleus by nucleus as blocks are done (nucleiseg.algorithms.blocks.NucleusMasks gives the
    nuclei no later block can reach): the same Features and ROIs as write_exports gives for
    the image read whole. Nothing is left of them unless `commit` is reached."""

    def __init__(self, paths: dict):
        self.files = []
        try:
            self.geojson = GeoJsonFile(paths["geojson"]) if "geojson" in paths else None
            self.files.append(self.geojson)
            self.rois = RoiZip(paths["imagej-rois"]) if "imagej-rois" in paths else None
            self.files.append(self.rois)
        except BaseException:
            self.discard()
            raise

    def add(self, row: dict, corner: tuple[int, int], mask: np.ndarray) -> None:
        """One nucleus: its measurement row (its "label" is its id), the image pixel (row,
        column) of its mask's top-left corner, and its mask over its bounding box."""
        label = int(row["label"])
        polygons = mask_polygons(mask, corner)
        if self.geojson is not None:
            self.geojson.add(nucleus_feature(label, polygons, row))
        if self.rois is not None:
            self.rois.add(imagej_roi(polygons, str(label)))

    def commit(self) -> None:
        for file in self.files:
            if file is not None:
                file.commit()

    def discard(self) -> None:
        for file in self.files:
            if file is not None:
                file.discard()


# ---------------------------------------------------------------- what predict writes


def export_paths(stem: str, out_dir: Path, exports) -> dict[str, Path]:
    """{export: path} of the requested exports of one image (predict's outputs)."""
    return {name: Path(out_dir) / EXPORT_FILES[name].format(stem=stem) for name in exports}


def write_exports(paths: dict, labels: np.ndarray, rows, axes: str = "", shape=()) -> None:
    """Write the exports among `paths` ("geojson", "imagej-rois") of labels (planes, H, W) and
    their measurement rows (measure_planes'). `axes`, `shape`: a stack's plane axes and their
    sizes ("" and () for one 2-D image). A stack's nuclei carry their plane: "plane", "t", "z"
    properties and QuPath's plane (z, t) in the GeoJSON, the 1-based slice of the labels TIFF
    as ImageJ's ROI position (and in front of the ROI's name)."""
    from nucleiseg.io.microscopy import plane_columns

    by_plane: dict = {}
    for row in rows:
        by_plane.setdefault(row.get("plane", "") if axes else "", []).append(row)
    if "geojson" in paths:
        features = []
        for flat, plane_labels in enumerate(labels):
            where = plane_columns(axes, shape, flat) if axes else None
            features += nucleus_features(plane_labels, by_plane.get(flat if axes else "", ()),
                                         where)
        write_geojson(paths["geojson"], features)
    if "imagej-rois" in paths:
        rois = []
        for flat, plane_labels in enumerate(labels):
            rois += imagej_rois(plane_labels, flat + 1 if axes else 0)
        write_imagej_rois(paths["imagej-rois"], rois)

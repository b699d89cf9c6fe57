"""End-to-end prediction (read, normalise, tiled model, blend, separate nuclei, measure, write)
with the shipped model, per stage and per engine; the classical pipeline beside it; peak memory.

Each case runs `nucleiseg.pipeline.run.predict_files` itself, in a fresh process
(`python -m benchmarks.prediction ENGINE IMAGES`), with its stages timed by wrapping the library
functions it calls. IMAGES: "dsb-val" (the shipped model's 85 validation images, never trained
on), "synthetic-4096" / "synthetic-8192" (one mosaic image), "many-N" (N small images, resident
memory sampled as they go), "wsi-N" (a synthetic N x N RGB tiled pyramidal TIFF, segmented block
by block: nucleiseg.algorithms.blocks; made once and kept in $TMPDIR/nucleiseg-benchmarks),
"slide-N" (the same for an N x N mosaic of DSB histology images: benchmarks.make_slide;
"slide-N-shrink2": its images shrunk 2x, nuclei half as large). ENGINE
"dask-local:N": the default engine on a Dask LocalCluster of N one-thread workers
(`predict --dask local:N`; nucleiseg.integrations.dask), timed from the first image submitted, the
cluster's start apart; the stages run in the workers and are not split.

Optional RUN: "overlapped" (the default: images overlapped in two threads, as `predict` runs
them on two cores or more; their stage seconds add up over both threads) or "one-by-one"
(overlap=False). Optional DIAMETER: "fixed" (PredictOptions(): scale 1, the default here) or
"auto" (`predict`'s default --diameter auto: options_for(record), which may predict an image a
second time at another scale). Optional EXPORTS: "none" (the default) or a comma-separated list
("geojson,imagej-rois": `predict --geojson --imagej-rois`); the outputs' sizes are reported.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Stopwatch, run_child, synthetic_image, synthetic_slide
from nucleiseg.io.wholeslide import BLOCKWISE_PIXELS

STAGES = ("read", "normalise", "model", "blend", "separate", "measure", "write")


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def write_inputs(images: str, data_dir: Path | None, folder: Path) -> list[Path]:
    from nucleiseg.io.images import find_samples, write_png
    from nucleiseg.model.saving import bundled_model_path, read_record

    if images == "dsb-val":
        wanted = set(read_record(bundled_model_path())["split"]["val"])
        samples, _ = find_samples(data_dir, skip_bad=True)
        return [s.image_path for s in samples if s.name in wanted]
    if images.startswith("wsi-"):  # measure() segments it block by block at any size
        size = int(images.split("-")[1])
        return [synthetic_slide(Path(tempfile.gettempdir()) / "nucleiseg-benchmarks"
                                / f"wsi_{size}.tif", size)]
    if images.startswith("slide-"):  # kept, as wsi-N
        from benchmarks.make_slide import make_slide

        size, *shrunk = images.split("-")[1:]
        path = (Path(tempfile.gettempdir()) / "nucleiseg-benchmarks"
                / f"slide_{'_'.join([size, *shrunk])}.tif")
        if not path.exists():
            make_slide(path, int(size), data_dir,
                       shrink=int(shrunk[0].removeprefix("shrink")) if shrunk else 1)
        return [path]
    if images.startswith("synthetic-"):
        size = int(images.split("-")[1])
        path = folder / f"synthetic_{size}.png"
        write_png(path, synthetic_image(size, data_dir))
        return [path]
    count = int(images.split("-")[1])  # many-N: N small crops of a mosaic
    mosaic = synthetic_image(1024, data_dir)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        top, left = rng.integers(0, 1024 - 96, 2)
        paths.append(folder / "in" / f"img{i:05d}.png")
        write_png(paths[-1], mosaic[top:top + 96, left:left + 96])
    return paths


def instrument(watch: Stopwatch):
    """Wrap the functions predict_files calls so each stage's time is counted."""
    import nucleiseg.algorithms.tiling as tiling
    import nucleiseg.inference.predict as infer
    import nucleiseg.pipeline.one_file as one_file

    one_file.read_planes = watch.wrap("read", one_file.read_planes)
    infer.apply_intensity_range = watch.wrap("normalise", infer.apply_intensity_range)
    infer.intensity_range = watch.wrap("normalise", infer.intensity_range)
    one_file.intensity_range = watch.wrap("normalise", one_file.intensity_range)
    infer.labels_from_probabilities = watch.wrap("separate", infer.labels_from_probabilities)
    one_file.measure_nuclei = watch.wrap("measure", one_file.measure_nuclei)
    one_file.write_labels = watch.wrap("write", one_file.write_labels)
    one_file.write_png = watch.wrap("write", one_file.write_png)
    one_file.outline_overlay = watch.wrap("write", one_file.outline_overlay)
    tiling.predict_tiled = watch.wrap("tiled", tiling.predict_tiled)
    # huge images: read block by block, measured as they go
    import nucleiseg.algorithms.blocks as blocks
    import nucleiseg.io.wholeslide as wholeslide

    wholeslide.LargeImage.read = watch.wrap("read", wholeslide.LargeImage.read)
    blocks.NucleusTable.add_block = watch.wrap("measure", blocks.NucleusTable.add_block)
    import nucleiseg.io.outlines as outlines  # huge images' outlines, nucleus by nucleus

    outlines.OutlineFiles.add = watch.wrap("outlines", outlines.OutlineFiles.add)


def is_slide(images: str) -> bool:
    """A whole-slide case, segmented block by block."""
    return images.startswith(("wsi-", "slide-"))


RUNS = ("overlapped", "one-by-one")
DIAMETERS = ("fixed", "auto")


def measure(engine_name: str, images: str, data_dir: Path | None, run: str = "overlapped",
            diameter: str = "fixed", exports: str = "none") -> dict:
    from nucleiseg.inference.engines import Engine, import_tensorflow_quietly, load_engine
    from nucleiseg.inference.predict import PredictOptions, options_for
    from nucleiseg.pipeline.run import predict_files

    if engine_name == "keras":
        import_tensorflow_quietly()
    watch = Stopwatch()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = write_inputs(images, data_dir, folder)
        megapixels = 0.0
        from nucleiseg.io.images import read_image

        for path in paths[:2000]:
            if is_slide(images):  # from the header: too large to read whole
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    megapixels += np.prod(tif.series[0].shape[:2]) / 1e6
                continue
            image = read_image(path)
            megapixels += image.shape[0] * image.shape[1] / 1e6
        megapixels *= len(paths) / min(len(paths), 2000)
        model_path = (folder / "tflite" / "nuclei_dsb2018.tflite" if engine_name == "tflite"
                      else None)
        if model_path is not None:
            from nucleiseg.export.exporter import export_model

            import_tensorflow_quietly()
            export_model(None, "tflite", model_path, log=lambda *_: None)
        started = time.perf_counter()
        engine, record = load_engine(model_path, "auto" if model_path else engine_name)
        load_seconds = time.perf_counter() - started
        model_pixels = [0]

        timed_model = watch.wrap("model", engine.predict_logits)

        def counted(tiles):
            model_pixels[0] += tiles.shape[0] * tiles.shape[1] * tiles.shape[2]
            return timed_model(tiles)

        engine = Engine(engine.name, counted, engine.num_classes)
        instrument(watch)
        samples, done = [], [0]

        def progress(message):  # resident memory after 20 evenly spaced images
            done[0] += 1
            if done[0] % max(1, len(paths) // 20) == 0:
                samples.append((done[0], round(rss_mb(), 1)))

        started = time.perf_counter()
        options = PredictOptions() if diameter == "fixed" else options_for(record)
        results = predict_files(engine, record, [p.parent for p in paths[:1]] if
                                images.startswith("many-") else paths, folder / "out",
                                options=options, progress=progress,
                                overlap=run == "overlapped",
                                blockwise_pixels=0 if is_slide(images) else
                                BLOCKWISE_PIXELS,
                                exports=() if exports == "none" else tuple(exports.split(",")))
        seconds = time.perf_counter() - started
        sizes = {path.name: round(path.stat().st_size / 2**20, 1)
                 for path in sorted((folder / "out").iterdir()) if len(paths) <= 10}
    stages = dict(watch.seconds)
    # Tiled prediction = normalising tiles + the model + blending; blending is the rest.
    stages["blend"] = stages.pop("tiled", 0.0) - stages.get("model", 0.0) - \
        stages.get("normalise", 0.0)
    if is_slide(images):  # labels are written as blocks pass: write = the rest
        # (0 when the next block, segmented in a thread meanwhile, hides it entirely)
        stages["write"] = max(0.0, seconds - stages.get("outlines", 0.0) -
                              sum(stages.get(k, 0.0) for k in STAGES if k != "write"))
    return {"engine": engine.name, "run": run, "diameter": diameter, "images": images,
            "files": len(results), "megapixels": round(megapixels, 2),
            "seconds": round(seconds, 2),
            "megapixels_per_second": round(megapixels / seconds, 3),
            "model_megapixels": round(model_pixels[0] / 1e6, 2),  # what the model saw
            "load_seconds": round(load_seconds, 2),
            "nuclei": sum(r.nuclei for r in results),
            "scale": float((results[0].check or {}).get("scale") or 1.0) if results else 1.0,
            "stages": {k: round(stages.get(k, 0.0), 2) for k in STAGES},
            "rss_samples_mb": samples, "exports": exports,
            "outlines_seconds": round(stages.get("outlines", 0.0), 2), "output_mb": sizes}


def measure_dask(where: str, images: str, data_dir: Path | None) -> dict:
    """predict_files on a Dask cluster (`predict --dask local:N`): seconds from the first image
    submitted to the CSV files written (model loads in the workers included), the cluster's
    start apart; each worker's peak resident memory."""
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.inference.predict import PredictOptions
    from nucleiseg.integrations.dask import EngineSpec, connect
    from nucleiseg.io.images import read_image
    from nucleiseg.pipeline.run import predict_files

    blockwise = 0 if images.startswith("wsi-") else BLOCKWISE_PIXELS
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = write_inputs(images, data_dir, folder)
        megapixels = sum(np.prod(read_image(p).shape[:2]) for p in paths) / 1e6
        engine, record = load_engine(None)
        started = time.perf_counter()
        with connect(where, EngineSpec(), progress=lambda _: None) as runner:
            start_seconds = time.perf_counter() - started
            started = time.perf_counter()
            results = predict_files(engine, record, paths, folder / "out",
                                    options=PredictOptions(), progress=lambda _: None,
                                    runner=runner, blockwise_pixels=blockwise)
            seconds = time.perf_counter() - started
            workers = runner.client.run(peak_rss_mb)
    return {"engine": f"{engine.name}, dask {where}", "run": "dask", "diameter": "fixed",
            "images": images, "files": len(results), "megapixels": round(megapixels, 2),
            "seconds": round(seconds, 2),
            "megapixels_per_second": round(megapixels / seconds, 3),
            "load_seconds": round(start_seconds, 2),
            "nuclei": sum(r.nuclei for r in results),
            "worker_peak_rss_mb": sorted(round(mb) for mb in workers.values()),
            "stages": {k: "" for k in STAGES}, "rss_samples_mb": []}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def classical(data_dir: Path) -> dict:
    """Speed and quality of the classical pipeline and of the shipped model (ONNX engine when
    available) on the shipped model's validation images."""
    from nucleiseg.algorithms.instances import instance_options_from, labels_from_probabilities
    from nucleiseg.evaluation import classical_segmenter, evaluate_images
    from nucleiseg.inference.engines import load_engine
    from nucleiseg.inference.predict import predict_quantised
    from nucleiseg.io.images import find_samples, load_samples
    from nucleiseg.model.saving import bundled_model_path, read_record

    wanted = set(read_record(bundled_model_path())["split"]["val"])
    samples, _ = find_samples(data_dir, skip_bad=True)
    loaded, _ = load_samples([s for s in samples if s.name in wanted])
    names = [s.name for s, _, _ in loaded]
    images, labels = [i for _, i, _ in loaded], [lab for _, _, lab in loaded]
    megapixels = sum(i.shape[0] * i.shape[1] for i in images) / 1e6
    engine, record = load_engine(None)
    options = instance_options_from(record)

    def model_segmenter(image):
        return labels_from_probabilities(predict_quantised(engine, image, record["config"]),
                                         options), None

    rows = []
    for method, segment in (("classical Otsu + watershed", classical_segmenter),
                            (f"shipped model ({engine.name})", model_segmenter)):
        started = time.perf_counter()
        report, _ = evaluate_images(segment, images, labels, names)
        seconds = time.perf_counter() - started  # segmentation + metrics
        rows.append({"method": method, "images": len(images),
                     "megapixels_per_second": round(megapixels / seconds, 3),
                     **{k: round(report[k], 4) for k in ("foreground_iou", "ap_50", "dsb_score")}})
    return {"rows": rows}


def run_wsi(size: int, slide_size: int | None = None, data_dir: Path | None = None,
            slide_shrink: int = 1, outlines: bool = False) -> list[dict]:
    """A size x size whole-slide TIFF block by block, and a 4096 x 4096 image read whole, with
    the default engine: MP/s, the ratio of the two, and peak memory. `outlines`: the slide
    again with --geojson --imagej-rois. With `slide_size`, also a slide_size² mosaic of DSB
    histology images (benchmarks.make_slide, shrunk `slide_shrink` times) as `predict` runs
    it by default (--diameter auto)."""
    cases = [("synthetic-4096", None, "fixed", "none"), (f"wsi-{size}", None, "fixed", "none")]
    if outlines:
        cases.append((f"wsi-{size}", None, "fixed", "geojson,imagej-rois"))
    if slide_size:
        shrunk = f"-shrink{slide_shrink}" if slide_shrink > 1 else ""
        cases.append((f"slide-{slide_size}{shrunk}", data_dir, "auto", "none"))
    out = []
    for images, data, diameter, exports in cases:
        result, peak = run_child(["benchmarks.prediction", "auto", images, str(data),
                                  "overlapped", diameter, exports])
        out.append(result | {"peak_rss_mb": round(peak)})
        print(f"  {images} ({exports}): {result['megapixels_per_second']} MP/s, "
              f"peak {peak:.0f} MB", flush=True)
    for row in out[1:]:
        row["vs_4096"] = round(row["megapixels_per_second"] /
                               out[0]["megapixels_per_second"], 3)
    return out


def dask_installed() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def run(data_dir: Path | None, quick: bool = False) -> dict:
    have_data = data_dir is not None and Path(data_dir).is_dir()
    out = {"engines": [], "memory": [], "classical": None}
    sets = (["dsb-val"] if have_data else []) + ["synthetic-4096"]
    cases = [("keras", "overlapped", "fixed"), ("onnx", "overlapped", "fixed"),
             *[("onnx-int8", run, diameter) for diameter in DIAMETERS for run in RUNS[::-1]],
             ("tflite", "overlapped", "fixed")]  # the fastest engine: one by one vs overlapped
    for images in sets:
        for engine, run, diameter in cases:
            result, peak = run_child(["benchmarks.prediction", engine, images, str(data_dir),
                                      run, diameter])
            out["engines"].append(result | {"peak_rss_mb": round(peak)})
            print(f"  predict {images} {engine} {run} {diameter}: "
                  f"{result['megapixels_per_second']} MP/s, peak {peak:.0f} MB", flush=True)
        if images == "dsb-val" and dask_installed():  # the same folder on 2 Dask workers
            result, peak = run_child(["benchmarks.prediction", "dask-local:2", images,
                                      str(data_dir)])
            out["engines"].append(result | {"peak_rss_mb": round(peak)})
            print(f"  predict {images} {result['engine']}: {result['megapixels_per_second']} "
                  f"MP/s, client peak {peak:.0f} MB, workers {result['worker_peak_rss_mb']} MB",
                  flush=True)
    for images in ("synthetic-8192", f"many-{1000 if quick else 10000}"):
        result, peak = run_child(["benchmarks.prediction", "auto", images, str(data_dir)])
        out["memory"].append(result | {"peak_rss_mb": round(peak)})
        print(f"  memory {images}: peak {peak:.0f} MB, {result['megapixels_per_second']} MP/s",
              flush=True)
    if have_data:
        out["classical"], _ = run_child(["benchmarks.prediction", "classical", "dsb-val",
                                         str(data_dir)])
    return out


if __name__ == "__main__":
    engine_name, images, data = sys.argv[1], sys.argv[2], sys.argv[3]
    data_dir = None if data == "None" else Path(data)
    if engine_name == "classical":
        result = classical(data_dir)
    elif engine_name.startswith("dask-"):
        result = measure_dask(engine_name.removeprefix("dask-"), images, data_dir)
    else:
        result = measure(engine_name, images, data_dir, *sys.argv[4:7])
    print(json.dumps(result))

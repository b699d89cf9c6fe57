"""python -m benchmarks [--data DSB_FOLDER] [--out FOLDER] [--quick] [--only SECTION ...]
                       [--wsi-size PIXELS] [--wsi-outlines]
                       [--slide-size PIXELS [--slide-shrink 2]]

Runs every benchmark on this machine, one process per case, and writes results.json and
results.md (the tables docs/performance.md shows) to --out (default benchmarks/results). What
needs the DSB data (../shared/data/dsb2018-stage1-train) is skipped when it is absent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, markdown_table

SECTIONS = ("prediction", "wsi", "training")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "date": dt.datetime.now().isoformat(timespec="seconds")}


def peak_memory(row: dict):
    """Peak MB; on Dask, the client's + each worker's."""
    workers = row.get("worker_peak_rss_mb")
    return row["peak_rss_mb"] if not workers else \
        f"{row['peak_rss_mb']} + " + " + ".join(map(str, workers))


def render(results: dict) -> str:
    parts = [f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
             f"{results['machine']['date']}; `{results['command']}`"]
    prediction = results.get("prediction")
    if prediction:
        stage_names = ("read", "normalise", "model", "blend", "separate", "measure", "write")
        rows = [[r["images"], r["engine"], r.get("run", "one-by-one"),
                 r.get("diameter", "fixed"), r["files"], r["megapixels"], r["seconds"],
                 r["megapixels_per_second"], peak_memory(r),
                 *[r["stages"][s] for s in stage_names]] for r in prediction["engines"]]
        parts += ["### Prediction, end to end (seconds per stage)",
                  "run: images overlapped in two threads (what `predict` does on two cores or "
                  "more; stage seconds add up over both threads) or one by one; diameter: fixed "
                  "scale 1, or `--diameter auto` (`predict`'s default; may predict an image "
                  "twice).",
                  markdown_table(["images", "engine", "run", "diameter", "files", "MP", "s",
                                  "MP/s", "peak MB", *stage_names], rows)]
        rows = []
        for r in prediction["memory"]:
            rss = r["rss_samples_mb"]
            rows.append([r["images"], r["engine"], r["files"], r["megapixels"],
                         r["megapixels_per_second"], r["peak_rss_mb"],
                         f"{rss[0][1]:.0f} MB after {rss[0][0]}" if rss else "",
                         f"{rss[-1][1]:.0f} MB after {rss[-1][0]}" if rss else ""])
        parts += ["### Memory", markdown_table(["images", "engine", "files", "MP", "MP/s",
                                                "peak MB", "resident, first sample",
                                                "resident, last sample"], rows)]
        if prediction.get("classical"):
            rows = [[r["method"], r["images"], r["megapixels_per_second"], r["foreground_iou"],
                     r["ap_50"], r["dsb_score"]] for r in prediction["classical"]["rows"]]
            parts += ["### Classical pipeline vs the shipped model (validation images; "
                      "segmentation + metrics)",
                      markdown_table(["method", "images", "MP/s", "foreground IoU", "AP@0.5",
                                      "DSB score"], rows)]
    if results.get("wsi"):
        rows = [[r["images"], r["engine"], r.get("diameter", "fixed"), r.get("scale", 1.0),
                 r.get("exports", "none"), r["megapixels"], r["seconds"],
                 r["megapixels_per_second"], r.get("vs_4096", ""), r["peak_rss_mb"], r["nuclei"],
                 *[r["stages"][s] for s in ("read", "model", "separate", "measure", "write")]]
                for r in results["wsi"]]
        parts += ["### Whole-slide image, block by block (vs a 4096² image read whole; "
                  "write: labels, stitching and the rest)",
                  markdown_table(["images", "engine", "diameter", "scale", "exports", "MP",
                                  "s", "MP/s", "vs 4096²", "peak MB", "nuclei", "read", "model",
                                  "separate", "measure", "write"], rows)]
    if results.get("training"):
        rows = [[r["size"], r["sampling"], r["case"], r["batch_size"], r["steps"],
                 r["images_per_second"], r["peak_rss_mb"]] for r in results["training"]]
        parts += ["### Training throughput",
                  markdown_table(["px", "sampling", "case", "batch", "steps", "images/s",
                                  "peak MB"], rows)]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    from benchmarks import prediction, training

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 instead of 10,000 images in the flat-memory run")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS)
    parser.add_argument("--wsi-size", type=int, default=30000,
                        help="side of the synthetic whole-slide TIFF (default 30000)")
    parser.add_argument("--wsi-outlines", action="store_true",
                        help="the slide also with --geojson --imagej-rois")
    parser.add_argument("--slide-size", type=int, default=None,
                        help="also a slide of this side made of DSB histology images "
                             "(benchmarks.make_slide), with --diameter auto")
    parser.add_argument("--slide-shrink", type=int, choices=(1, 2, 4), default=1,
                        help="that slide's images shrunk this much (smaller nuclei: upscaled)")
    args = parser.parse_args(argv)
    data = args.data.resolve() if args.data.is_dir() else None
    if data is None:
        print(f"{args.data}: not found; skipping what needs the DSB data")
    argv = sys.argv[1:] if argv is None else list(argv)
    results = {"machine": machine(), "command": " ".join(["python -m benchmarks", *argv]),
               "data": str(data)}
    if "prediction" in args.only:
        print("prediction ...", flush=True)
        results["prediction"] = prediction.run(data, args.quick)
    if "wsi" in args.only:
        print(f"whole-slide image {args.wsi_size}² ...", flush=True)
        results["wsi"] = prediction.run_wsi(args.wsi_size, args.slide_size, data,
                                            args.slide_shrink, args.wsi_outlines)
    if "training" in args.only:
        print("training ...", flush=True)
        results["training"] = training.run(data, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(render(results))
    print(render(results))
    print(f"written to {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

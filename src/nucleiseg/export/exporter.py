"""`nucleiseg export`: a trained .keras model as a SavedModel, ONNX or TFLite file
(nucleiseg.export.onnx), or a bioimage.io model package (nucleiseg.export.modelzoo).

Every export has dynamic batch, height and width (any multiple of 32), carries the model's
record (nucleiseg.inference.engines) with the SHA-256 of the .keras file it came from, is
checked against Keras on a test batch before it is kept, and is written atomically.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nucleiseg.errors import UsageError
from nucleiseg.export.modelzoo import build_bioimageio, require_bioimageio
from nucleiseg.export.onnx import (
    INT8_TOLERANCE,
    TOLERANCE,
    ExportError,
    build_int8,
    build_onnx,
    build_savedmodel,
    build_tflite,
    check_against_keras,
    install,
)
from nucleiseg.inference.engines import file_digest
from nucleiseg.model.saving import load_model, read_record, resolve_model_path

FORMATS = ("savedmodel", "onnx", "onnx-int8", "tflite", "bioimageio")
SUFFIXES = {"onnx": ".onnx", "onnx-int8": ".int8.onnx", "tflite": ".tflite", "bioimageio": ".zip"}


def export_model(model_path: Path | None, fmt: str, out: Path, overwrite: bool = False,
                 log=print, calibration: Path | None = None) -> dict:
    """Export, check and write; returns {"path", "format", "max_difference", "bytes"}.

    onnx-int8: the ONNX export quantised to int8 (nucleiseg.export.quantize), calibrated on 32 crops
    of the labelled or plain images in `calibration` (default: the bundled training sample);
    checked by the share of calibration pixels whose most likely class changes.
    bioimageio: a bioimage.io model package (.zip) with ONNX and Keras weights, kept only if it
    validates and passes its own test (nucleiseg.export.modelzoo); max_difference is its ONNX
    weights' difference from Keras."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    if fmt in SUFFIXES and not out.name.endswith(SUFFIXES[fmt]):
        raise UsageError(f"{out}: a {fmt} export must end in {SUFFIXES[fmt]}")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: exists; pass --overwrite to replace it")
    if fmt == "bioimageio":
        require_bioimageio()
    source = resolve_model_path(model_path)
    read_record(source)  # a missing or foreign model file: refused before anything is written
    # an output folder that cannot be made or written to: refused before the model loads
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model, record = load_model(source)
        record = record | {"exported_from": {"file": source.name, "sha256": file_digest(source)},
                           "export_format": fmt}
        if fmt == "onnx-int8":
            built, difference = build_int8(model, record, work, calibration)
            if difference > INT8_TOLERANCE:
                raise ExportError(f"{out}: the int8 model changes the class of {difference:.1%} "
                                  f"of calibration pixels (tolerance {INT8_TOLERANCE:.0%})")
        elif fmt == "bioimageio":
            built, difference = build_bioimageio(model, record, source, work, out)
        else:
            built = {"savedmodel": build_savedmodel, "onnx": build_onnx,
                     "tflite": build_tflite}[fmt](model, record, work)
            difference = check_against_keras(model, fmt, built)
            if difference > TOLERANCE:
                raise ExportError(f"{out}: the {fmt} export differs from the Keras model by "
                                  f"{difference:.2g} in probability (tolerance {TOLERANCE})")
        install(built, out, fmt, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = (sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir()
            else out.stat().st_size)
    measure = ("share of calibration pixels whose class changes" if fmt == "onnx-int8" else
               "largest difference from Keras in probability")
    if fmt == "bioimageio":
        measure = "validated and tested with bioimageio; ONNX weights' " + measure
    log(f"{fmt} export written to {out} ({size / 1e6:.1f} MB; {measure}: {difference:.1e})")
    return {"path": str(out), "format": fmt, "max_difference": difference, "bytes": size}

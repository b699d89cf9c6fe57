"""Saving and loading models: one `.keras` file that carries its own nucleiseg record.

The record (training config, data, split, metrics) is stored as `nucleiseg.json` inside the
`.keras` zip, next to Keras's own files; `keras.models.load_model` ignores it, so the file
stays a plain Keras model that also loads without nucleiseg (given the custom classes).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from nucleiseg.errors import file_error
from nucleiseg.io.runfiles import atomic_write

RECORD_NAME = "nucleiseg.json"
FORMAT_VERSION = 1


def save_model(model, path: Path, record: dict) -> None:
    """Save atomically: a crash never leaves a half-written model at `path`."""
    record = {"format_version": FORMAT_VERSION, **record}

    def write(tmp: Path):
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(RECORD_NAME, json.dumps(record, indent=2))

    atomic_write(Path(path), write)


def read_record(path: Path) -> dict:
    """The nucleiseg record of a saved model, without loading TensorFlow."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            if RECORD_NAME not in archive.namelist():
                raise file_error(path, "a Keras file without a nucleiseg record "
                                 "(not made by nucleiseg train)")
            record = json.loads(archive.read(RECORD_NAME))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise file_error(path, f"not a nucleiseg model (.keras) file ({exc})") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise file_error(path, f"model format version {record.get('format_version')} is not "
                         f"supported by this nucleiseg (expects {FORMAT_VERSION})")
    return record


BUNDLED_MODEL = "nuclei_dsb2018.keras"  # the general model: every image without colour
BUNDLED_HE_MODEL = "nuclei_he.keras"  # the H&E model: colour images (docs/models.md)
# --model / --init-model names of the bundled models, when no file of that name exists
BUNDLED_NAMES = {"bundled": BUNDLED_MODEL, "bundled-general": BUNDLED_MODEL,
                 "bundled-he": BUNDLED_HE_MODEL}


def bundled_model_path(name: str = BUNDLED_MODEL) -> Path:
    """A pretrained model shipped inside the package (default: the general one)."""
    from importlib import resources

    return Path(str(resources.files("nucleiseg") / "pretrained" / name))


def bundled_he_model_path() -> Path | None:
    """The bundled H&E model colour images run on, or None if this installation lacks it."""
    path = bundled_model_path(BUNDLED_HE_MODEL)
    return path if path.is_file() else None


def resolve_model_path(path: Path | None) -> Path:
    """`path`, or with None the bundled pretrained model (a clear error if there is none);
    the names 'bundled', 'bundled-general' and 'bundled-he' (BUNDLED_NAMES) give one bundled
    model on every image."""
    if path is not None and (str(path) not in BUNDLED_NAMES or Path(path).exists()):
        return Path(path)  # a file (a file named like a bundled model wins)
    path = bundled_model_path(BUNDLED_NAMES.get(str(path), BUNDLED_MODEL))
    if not path.is_file():
        raise file_error(path, "this installation has no such bundled pretrained model; "
                         "give one with --model")
    return path


def load_model(path: Path | None = None):
    """Return (model, record); with no path, the pretrained model shipped in the package."""
    path = resolve_model_path(path)
    import keras

    import nucleiseg.model.augment  # noqa: F401  registers custom classes
    import nucleiseg.model.keras_metrics  # noqa: F401

    record = read_record(path)
    try:
        model = keras.models.load_model(path)
    except Exception as exc:
        raise file_error(path, f"cannot load the model ({type(exc).__name__}: {exc})") from None
    return model, record

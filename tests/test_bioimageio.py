"""`nucleiseg export --format bioimageio`: a bioimage.io model package that validates and
passes its test offline (issue 14, part 4)."""

import os
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import TINY_MODEL, disk_samples, make_disks, write_paired

from nucleiseg.errors import UsageError

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")
pytest.importorskip("tf2onnx")


def refuse_network(patch) -> None:
    """Any attempt to open a connection fails the test: all of it must work offline."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def no_network(monkeypatch):
    refuse_network(monkeypatch)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The bundled model exported once, over a damaged old package (--overwrite), with the
    network refused: about 35 s on 2 CPU cores (ONNX conversion, then bioimageio.core's test
    of both weights formats)."""
    from nucleiseg.export.exporter import export_model

    folder = tmp_path_factory.mktemp("bioimageio")
    out = folder / "nuclei.zip"
    out.write_bytes(b"PK\3\4 damaged")
    with pytest.MonkeyPatch.context() as patch:
        refuse_network(patch)
        result = export_model(None, "bioimageio", out, overwrite=True, log=lambda *_: None)
    assert [path.name for path in folder.iterdir()] == ["nuclei.zip"]  # no work files left
    return out, result


def read_rdf(path):
    from ruyaml import YAML  # bioimageio.spec's YAML library

    with zipfile.ZipFile(path) as archive:
        return YAML(typ="safe").load(archive.read("rdf.yaml")), set(archive.namelist())


@pytest.mark.slow
def test_package_holds_what_the_model_zoo_asks_for(package):
    out, result = package
    assert result["format"] == "bioimageio" and result["max_difference"] < 1e-4
    rdf, names = read_rdf(out)
    assert {"rdf.yaml", "model.onnx", "model.keras", "test_input.npy", "test_output.npy",
            "cover.png", "README.md", "LICENSE"} <= names
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5.")
    assert rdf["name"] == "nucleiseg nuclei U-Net (DSB 2018)"
    assert rdf["license"] == "MIT"
    assert rdf["cite"][0]["doi"] == "10.1038/s41592-019-0612-7"
    assert rdf["weights"]["onnx"]["opset_version"] == 17
    assert rdf["weights"]["onnx"]["parent"] == "keras_v3"
    (image,), (logits,) = rdf["inputs"], rdf["outputs"]
    assert [axis["type"] for axis in image["axes"]] == ["batch", "space", "space", "channel"]
    assert image["axes"][1]["size"] == {"min": 32, "step": 32}
    assert logits["axes"][3]["channel_names"] == ["background", "interior", "boundary"]
    # the preprocessing stated is nucleiseg's normalisation: per-image percentiles 1 and 99.8
    # over all pixels and channels, then clipped to [0, 1]
    steps = [step for step in image["preprocessing"] if step["id"] != "ensure_dtype"]
    assert steps == [
        {"id": "scale_range", "kwargs": {"axes": ["y", "x", "channel"], "min_percentile": 1.0,
                                         "max_percentile": 99.8}},
        {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
    ]
    # the watershed post-processing stays nucleiseg's, and the description says so
    assert "nucleiseg's post-processing" in rdf["description"]
    assert "nucleiseg predict" in rdf["description"]
    assert rdf["config"]["nucleiseg"]["postprocessing"]["marker_threshold"] == 0.5
    with zipfile.ZipFile(out) as archive:
        readme = archive.read("README.md").decode()
    assert "watershed" in readme and "pip install nucleiseg" in readme
    assert "## Validation" in readme and "AP50" in readme


@pytest.mark.slow
def test_package_validates_offline(package, no_network):
    from nucleiseg.export.modelzoo import validate_package

    summary = validate_package(package[0])
    assert summary.status == "valid-format", summary.display()


@pytest.mark.slow
def test_package_test_passes_offline(package, no_network):
    """bioimageio.core's own test: the test input, preprocessed as described, through the ONNX
    and Keras weights, must give the test output (made with nucleiseg's normalisation)."""
    from nucleiseg.export.modelzoo import run_package_test

    summary = run_package_test(package[0])
    assert summary.status == "passed", summary.display()
    tested = {detail.name for detail in summary.details if detail.status == "passed"}
    assert "Reproduce test outputs from test inputs (onnx)" in tested
    assert "Reproduce test outputs from test inputs (keras_v3)" in tested


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grey8", "grey16", "colour", "float"])
def test_described_preprocessing_is_nucleisegs_normalisation(package, kind):
    """bioimageio.core applying the rdf's preprocessing gives normalize_image's values."""
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.core.proc_setup import get_pre_and_postprocessing
    from bioimageio.spec import load_description

    from nucleiseg.algorithms.preprocess import normalize_image, to_rgb
    from nucleiseg.export.modelzoo import bioimageio_quiet

    rng = np.random.default_rng(1)
    grey = make_disks((96, 64), seed=2)[0]
    image = {"grey8": grey, "grey16": grey.astype(np.uint16) * 200 + 3,
             "colour": rng.integers(0, 256, (64, 96, 3)).astype(np.uint8),
             "float": rng.normal(5.0, 40.0, (64, 64)).astype(np.float32)}[kind]
    with bioimageio_quiet():
        model = load_description(package[0], perform_io_checks=False)
        sample = create_sample_for_model(model, inputs=to_rgb(image).astype(np.float32)[None])
        get_pre_and_postprocessing(model, dataset_for_initial_statistics=[]).pre(sample)
    described = next(iter(sample.members.values())).data.to_numpy()[0]
    np.testing.assert_allclose(described, normalize_image(image), atol=1e-5)


@pytest.mark.slow
def test_a_trained_model_exports_and_its_keras_weights_need_no_nucleiseg(tmp_path):
    """A model from nucleiseg train (its custom loss compiled in): the package passes its
    test, and its model.keras loads with plain Keras, as bioimage.io consumers load it."""
    from nucleiseg.config import TrainConfig
    from nucleiseg.export.exporter import export_model
    from nucleiseg.training.fit import train

    data = write_paired(tmp_path / "data", disk_samples(8))
    config = TrainConfig(image_size=64, sampling="crops", target="binary", epochs=1,
                         batch_size=4, steps_per_epoch=2, **TINY_MODEL)
    run, _ = train(config, data, tmp_path / "run", verbose=0, log=lambda *_: None)
    out = tmp_path / "tiny.zip"
    backend = os.environ.get("KERAS_BACKEND")
    export_model(run / "model.keras", "bioimageio", out, log=lambda *_: None)
    assert os.environ.get("KERAS_BACKEND") == backend  # bioimageio.core's setting undone
    rdf, _ = read_rdf(out)
    assert rdf["name"] == "nucleiseg U-Net model"
    assert rdf["outputs"][0]["axes"][3]["channel_names"] == ["background", "nucleus"]
    assert "cite" not in rdf or not rdf["cite"]  # not trained on DSB 2018: no DSB citation
    with zipfile.ZipFile(out) as archive:
        archive.extract("model.keras", tmp_path / "unpacked")
    code = ("import keras; model = keras.models.load_model(%r); "
            "print(model.output_shape, 'nucleiseg' in __import__('sys').modules)"
            % str(tmp_path / "unpacked" / "model.keras"))
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.stdout.strip().splitlines()[-1:] == ["(None, None, None, 2) False"], (
        result.stdout + result.stderr)


def test_cli_refuses_a_bad_out_with_one_line(tmp_path, capsys):
    from nucleiseg.cli import main

    existing = tmp_path / "nuclei.zip"
    existing.write_bytes(b"old")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = [(existing, "exists; pass --overwrite"), (tmp_path / "nuclei.onnx", "must end in .zip"),
             (blocker / "nuclei.zip", "a_file")]
    for out, message in cases:
        code = main(["export", "--format", "bioimageio", "--out", str(out)])
        error = capsys.readouterr().err
        assert code != 0 and message in error and len(error.strip().splitlines()) == 1, error
    assert existing.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a_file", "nuclei.zip"]


def test_missing_bioimageio_packages_are_named(tmp_path, monkeypatch):
    import sys

    from nucleiseg.export.exporter import export_model

    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # as if not installed
    with pytest.raises(UsageError, match=r"bioimageio.spec and bioimageio.core .*"
                                         r"nucleiseg\[export,bioimageio\]"):
        export_model(None, "bioimageio", tmp_path / "nuclei.zip")
    assert not list(tmp_path.iterdir())


def test_an_error_inside_bioimageio_is_one_line_naming_the_versions_and_the_cause(tmp_path):
    """bioimageio.spec 0.5.12.0 with pydantic 2.14.4 raised a pydantic ValidationError (many
    lines) out of ModelDescr(...): such errors become one ExportError line."""
    from nucleiseg.export.modelzoo import bioimageio_errors, library_versions
    from nucleiseg.export.onnx import ExportError

    out = tmp_path / "nuclei.zip"
    with pytest.raises(ExportError) as raised:
        with bioimageio_errors(out, "describing the model"):
            raise ValueError("1 validation error for ModelDescr\n  Value error, Error calling "
                             "function `package_file_descr_serializer`: TypeError: 'index_key'")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{out}: bioimageio failed while describing the model (")
    assert "bioimageio.spec 0." in message and "pydantic 2." in message
    assert "ValueError: 1 validation error for ModelDescr Value error" in message
    assert "pip install --upgrade 'nucleiseg[export,bioimageio]'" in message
    assert library_versions().split(", ")[0].startswith("bioimageio.spec ")
    # nucleiseg's own errors (a failed package test) and OSError (a full disk) pass through
    for error in (ExportError("the package fails its test"), OSError(28, "No space left")):
        with pytest.raises(type(error)):
            with bioimageio_errors(out, "testing the package"):
                raise error


@pytest.mark.slow
def test_cli_turns_a_failure_inside_bioimageio_into_one_line(tmp_path, capsys, monkeypatch):
    from nucleiseg.cli import main
    from nucleiseg.export import modelzoo

    def broken(*args, **kwargs):
        raise TypeError("'index_key' is expected to be an integer or a string")

    monkeypatch.setattr(modelzoo, "save_package", broken)
    out = tmp_path / "nuclei.zip"
    code = main(["export", "--format", "bioimageio", "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 1 and len(error.strip().splitlines()) == 1, error
    assert "bioimageio failed while writing the package (bioimageio.spec " in error
    assert "TypeError: 'index_key' is expected" in error
    assert not list(tmp_path.iterdir())  # nothing written, no work folder left

"""Int8 quantisation of an ONNX export: the exact ConvTranspose rewrite, calibration, QDQ model."""

import numpy as np
import pytest

from nucleiseg.errors import UsageError

pytestmark = pytest.mark.slow
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from nucleiseg.algorithms.preprocess import normalize_image  # noqa: E402
from nucleiseg.algorithms.tiling import pad_image, round_up  # noqa: E402
from nucleiseg.export import quantize  # noqa: E402
from nucleiseg.io.images import bundled_sample, find_samples, load_samples  # noqa: E402
from nucleiseg.model.saving import bundled_model_path  # noqa: E402

FP32 = bundled_model_path().with_suffix(".onnx")


def run(model, tiles):
    """Logits of an ONNX model (path or ModelProto) on an N x H x W x 3 batch."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: tiles})[0]


def op_types(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def normalised_images(part: str) -> list[np.ndarray]:
    loaded, _ = load_samples(find_samples(bundled_sample(part))[0])
    return [normalize_image(image) for _, image, _ in loaded]


def test_calibration_tiles_are_deterministic_crops_and_pad_small_images():
    rng = np.random.default_rng(1)
    images = [rng.random(shape, dtype=np.float32) for shape in ((300, 280, 3), (40, 90, 3))]
    tiles = quantize.calibration_tiles(images, count=5, size=64, seed=3)
    assert tiles.shape == (5, 64, 64, 3) and tiles.dtype == np.float32
    assert np.array_equal(tiles, quantize.calibration_tiles(images, count=5, size=64, seed=3))
    assert not np.array_equal(tiles, quantize.calibration_tiles(images, count=5, size=64, seed=4))
    small = quantize.calibration_tiles(images[1:], count=1, size=64)[0]
    padded = np.pad(images[1], ((0, 24), (0, 0), (0, 0)), mode="symmetric")
    assert any(np.array_equal(small, padded[:, x:x + 64]) for x in range(27))


def test_rewrite_conv_transpose_is_exact_on_the_bundled_model():
    model = onnx.load(str(FP32))
    rewritten = quantize.rewrite_conv_transpose(model)
    assert "ConvTranspose" in op_types(model)  # the input is left as it was
    assert "ConvTranspose" not in op_types(rewritten)
    assert op_types(rewritten).count("DepthToSpace") == op_types(model).count("ConvTranspose")
    rng = np.random.default_rng(0)
    for shape in ((1, 64, 96, 3), (2, 128, 128, 3)):
        tiles = rng.random(shape, dtype=np.float32)
        assert np.abs(run(rewritten, tiles) - run(model, tiles)).max() < 1e-4


def conv_transpose_model(with_bias: bool, **attributes):
    """A one-node ONNX model: ConvTranspose 3 -> 5 channels, 3x3 kernel, random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(size=(3, 5, 3, 3)).astype(np.float32), "W")]
    if with_bias:
        weights.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "B"))
    node = helper.make_node("ConvTranspose", ["x"] + [w.name for w in weights], ["y"],
                            kernel_shape=[3, 3], **attributes)
    graph = helper.make_graph(
        [node], "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5, None, None])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("with_bias", [True, False])
def test_rewrite_handles_bias_and_odd_sizes(with_bias):
    model = conv_transpose_model(with_bias, strides=[2, 2])
    rewritten = quantize.rewrite_conv_transpose(model)
    assert op_types(rewritten) == ["Conv", "DepthToSpace", "Slice"]
    x = np.random.default_rng(3).normal(size=(2, 3, 7, 10)).astype(np.float32)
    expected = run(model, x)
    assert expected.shape == (2, 5, 15, 21)
    assert np.abs(run(rewritten, x) - expected).max() < 1e-4


@pytest.mark.parametrize("attributes", [
    {"strides": [1, 1]}, {"strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"strides": [2, 2], "output_padding": [1, 1]}, {"strides": [2, 2], "dilations": [2, 2]},
])
def test_rewrite_leaves_other_conv_transposes_alone(attributes):
    model = conv_transpose_model(True, **attributes)
    assert op_types(quantize.rewrite_conv_transpose(model)) == ["ConvTranspose"]


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """(int8 model path, the QDQ model before the cleanup pass) from 8 small train crops."""
    tiles = quantize.calibration_tiles(normalised_images("train"), count=8, size=128)
    captured = []
    sink = quantize.sink_dequantize
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize, "sink_dequantize", lambda m: captured.append(m) or sink(m))
        out = tmp_path_factory.mktemp("quantise") / "model_int8.onnx"
        quantize.quantize_onnx(FP32, out, tiles)
    return out, captured[0]


def test_quantised_model_agrees_with_fp32_and_keeps_the_record(quantised):
    path, _ = quantised
    model, source = onnx.load(str(path)), onnx.load(str(FP32))
    ops = op_types(model)
    assert "QuantizeLinear" in ops and "ConvTranspose" not in ops
    assert {p.key: p.value for p in model.metadata_props}["nucleiseg"] == \
        {p.key: p.value for p in source.metadata_props}["nucleiseg"]
    assert path.stat().st_size < FP32.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    for image in normalised_images("test")[:3]:
        height, width = image.shape[:2]
        batch = pad_image(image, round_up(height), round_up(width))[None]
        agree = (run(path, batch).argmax(-1) == run(FP32, batch).argmax(-1)).mean()
        assert agree >= 0.99


def test_cleanup_pass_is_exact(quantised):
    path, before = quantised
    after = onnx.load(str(path))
    assert op_types(after).count("DequantizeLinear") < op_types(before).count("DequantizeLinear")
    tiles = np.random.default_rng(4).random((2, 96, 160, 3), dtype=np.float32)
    assert np.array_equal(run(after, tiles), run(before, tiles))


@pytest.mark.parametrize("shape", [(1, 8, 5, 7), (2, 12, 1, 4)])
def test_depth_to_space_channels_last_is_exact(shape):
    from onnx import TensorProto, helper

    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="DCR")
    graph = helper.make_graph([node], "d2s",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rewritten = quantize.depth_to_space_channels_last(model)
    assert "DepthToSpace" not in op_types(rewritten) and op_types(model) == ["DepthToSpace"]
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    n, c, h, w = shape  # DCR: channel (row phase, column phase, c), numpy's reference
    expected = x.reshape(n, 2, 2, c // 4, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(
        n, c // 4, 2 * h, 2 * w)
    session = ort.InferenceSession(rewritten.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"x": x})[0], expected)


def test_quantised_model_has_no_depth_to_space(quantised):
    assert "DepthToSpace" not in op_types(onnx.load(str(quantised[0])))


def test_quantize_onnx_rejects_bad_tiles_and_names_the_missing_extra(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="N x H x W x 3"):
        quantize.quantize_onnx(FP32, tmp_path / "q.onnx", np.zeros((4, 32, 32), np.float32))
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(UsageError, match=r"pip install 'nucleiseg\[export\]'"):
        quantize.quantize_onnx(FP32, tmp_path / "q.onnx", np.zeros((4, 32, 32, 3), np.float32))

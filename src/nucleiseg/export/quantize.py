"""Int8 ONNX models for CPU inference: static quantisation of an fp32 ONNX export.

ONNX Runtime's CPU provider has no int8 ConvTranspose, so each 3x3 stride-2 ConvTranspose is
first rewritten, exactly, as a 2x2 Conv with 4x the output channels (one set per output phase)
+ DepthToSpace + Slice. The model is then quantised statically (QDQ: per-channel int8 weights,
uint8 activations, ranges from the 99.999th percentile over calibration tiles) and cleaned up:
DequantizeLinear is moved below pure data-movement ops so they run on uint8, Shape reads the
uint8 tensor, and DequantizeLinear -> QuantizeLinear pairs that cancel are dropped. Last,
each DepthToSpace is spelled as a channels-last reshape and transpose, so that ONNX Runtime,
which runs int8 convolutions channels-last, no longer converts the decoder's tensors to
channels-first and back around it (exact; 1.2-1.5x faster: docs/performance.md).
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nucleiseg.algorithms.tiling import pad_image
from nucleiseg.errors import UsageError, file_error
from nucleiseg.io.runfiles import atomic_write

CALIBRATION_BATCH = 4
CALIBRATION_PERCENTILE = 99.999
# ConvTranspose tap (kernel index) feeding output phase p from 2x2-Conv tap t, as {(p, t): k}:
# y[2m] = x[m-1] W[2] + x[m] W[0], y[2m+1] = x[m] W[1]; phase 1 has no tap 0 (zero weights).
_TAP = {(0, 0): 2, (0, 1): 0, (1, 1): 1}
_DATA_MOVEMENT = {"DepthToSpace", "Slice", "Pad"}  # elementwise-free: commute with dequantising


def _require_onnx():
    try:
        import onnx
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise UsageError("int8 quantisation needs onnx and onnxruntime: "
                         "pip install 'nucleiseg[export]'") from None
    return onnx


def calibration_tiles(images, count: int = 32, size: int = 256, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) float32 random crops of normalised H x W x 3 images.

    Images are used in turn in a shuffled order (each once before any twice); ones smaller than
    `size` are mirror-padded at the bottom/right. The same seed gives the same tiles.
    """
    if not images:
        raise UsageError("calibration needs at least one image")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(images))
                            for _ in range(math.ceil(count / len(images)))])[:count]
    tiles = []
    for index in order:
        image = images[index]
        image = pad_image(image, size, size)
        top = rng.integers(0, image.shape[0] - size + 1)
        left = rng.integers(0, image.shape[1] - size + 1)
        tiles.append(image[top:top + size, left:left + size])
    return np.stack(tiles).astype(np.float32)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewritable(node, initializers: dict) -> bool:
    """A ConvTranspose the phase rewrite reproduces exactly: 3x3, stride 2, no padding."""
    a = _attributes(node)
    return (node.op_type == "ConvTranspose" and list(a.get("kernel_shape", [])) == [3, 3]
            and list(a.get("strides", [])) == [2, 2] and a.get("group", 1) == 1
            and list(a.get("dilations", [1, 1])) == [1, 1] and not any(a.get("pads", []))
            and not any(a.get("output_padding", [])) and "output_shape" not in a
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and node.input[1] in initializers
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in initializers))


def rewrite_conv_transpose(model):
    """A copy of the ONNX model with each 3x3 stride-2 ConvTranspose (no pads) replaced by
    Conv(2x2, pads 1, 4*Cout) + DepthToSpace(2, DCR) + Slice(drop last row/col): the same
    (2H+1) x (2W+1) output, up to float rounding. Other ConvTransposes are left as they are."""
    onnx = _require_onnx()
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    added, nodes = [], []

    def constant(name, array):
        added.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    for index, node in enumerate(graph.node):
        if not _rewritable(node, initializers):
            nodes.append(node)
            continue
        weights = numpy_helper.to_array(initializers[node.input[1]])  # (Cin, Cout, 3, 3)
        cin, cout = weights.shape[:2]
        kernel = np.zeros((2, 2, cout, cin, 2, 2), weights.dtype)  # (phase h, phase w, ...)
        for (ph, th), kh in _TAP.items():
            for (pw, tw), kw in _TAP.items():
                kernel[ph, pw, :, :, th, tw] = weights[:, :, kh, kw].T
        base = f"{node.name or 'conv_transpose'}_{index}_phases"
        inputs = [node.input[0], constant(base + "_W", kernel.reshape(4 * cout, cin, 2, 2))]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]])
            inputs.append(constant(base + "_B", np.tile(bias, 4)))
        nodes += [
            helper.make_node("Conv", inputs, [base + "_conv"], name=base + "_conv",
                             kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("DepthToSpace", [base + "_conv"], [base + "_d2s"],
                             name=base + "_d2s", blocksize=2, mode="DCR"),
            helper.make_node("Slice", [base + "_d2s",
                                       constant(base + "_starts", np.array([0, 0], np.int64)),
                                       constant(base + "_ends", np.array([-1, -1], np.int64)),
                                       constant(base + "_axes", np.array([2, 3], np.int64))],
                             list(node.output), name=base + "_slice"),
        ]
    if not added:
        return model
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used] + added
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def sink_dequantize(model):
    """A copy of a QDQ model cleaned up exactly: per-tensor DequantizeLinear moved below
    DepthToSpace / Slice / zero Pad (which then run on uint8; a zero pad becomes the zero
    point), Shape ops reading the quantised tensor, cancelling DQ -> Q pairs removed."""
    from onnx import numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer
              if math.prod(i.dims) <= 1}  # scalars: per-tensor scales and zero points
    outputs = {o.name for o in graph.output}
    nodes = [copy.deepcopy(node) for node in graph.node]

    def per_tensor(node):
        return len(node.input) == 3 and node.input[1] in values and node.input[2] in values

    def movable(op, dq) -> bool:
        if op.op_type not in _DATA_MOVEMENT or list(op.input).count(dq.output[0]) != 1 \
                or op.input[0] != dq.output[0]:
            return False
        if op.op_type != "Pad":
            return True
        fill = op.input[2] if len(op.input) > 2 else ""
        return (_attributes(op).get("mode", b"constant") in (b"constant", "constant")
                and (not fill or (fill in values and float(values[fill]) == 0.0)))

    changed = True
    while changed:  # one change per pass: the consumer map is rebuilt after each
        changed = False
        consumers = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for dq in (n for n in nodes if n.op_type == "DequantizeLinear"):
            if not per_tensor(dq) or dq.output[0] in outputs:
                continue
            users = consumers.get(dq.output[0], [])
            for shape in (u for u in users if u.op_type == "Shape"):
                shape.input[0] = dq.input[0]  # the same shape, without dequantising
            users = [u for u in users if u.op_type != "Shape"]
            if len(users) != 1:
                continue
            (op,) = users
            if movable(op, dq):  # x_q -> DQ -> op  becomes  x_q -> op -> DQ
                if op.op_type == "Pad":
                    while len(op.input) < 3:
                        op.input.append("")
                    op.input[2] = dq.input[2]  # pad with the zero point: 0.0 once dequantised
                result = op.output[0]
                op.input[0], op.output[0] = dq.input[0], result + "_quantised"
                dq.input[0], dq.output[0] = result + "_quantised", result
                nodes.remove(dq)
                nodes.insert(nodes.index(op) + 1, dq)  # keep the graph topologically sorted
                changed = True
                break
            if (op.op_type == "QuantizeLinear" and per_tensor(op) and op.output[0] not in outputs
                    and all(np.array_equal(values[a], values[b]) and
                            values[a].dtype == values[b].dtype
                            for a, b in zip(dq.input[1:], op.input[1:]))):
                for user in consumers.get(op.output[0], []):  # x_q -> DQ -> Q -> y: x_q -> y
                    user.input[:] = [dq.input[0] if n == op.output[0] else n for n in user.input]
                nodes.remove(dq)
                nodes.remove(op)
                changed = True
                break
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def depth_to_space_channels_last(model):
    """A copy of the ONNX model with each DepthToSpace (blocksize 2, DCR) spelled as
    Transpose to NHWC -> Reshape (N, H, W, 2, 2C) -> Transpose (N, H, 2, W, 2C) -> Reshape
    (N, 2H, 2W, C) -> Transpose to NCHW: the same values. ONNX Runtime's channels-last int8
    convolutions then meet transposes it cancels, where DepthToSpace made it transpose every
    decoder tensor to NCHW and back (and its own NCHW DepthToSpace is slow)."""
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    added, nodes = [], []

    def constant(name, values):
        added.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    for index, node in enumerate(graph.node):
        a = _attributes(node)
        if (node.op_type != "DepthToSpace" or a.get("blocksize") != 2
                or a.get("mode", b"DCR") not in (b"DCR", "DCR")):
            nodes.append(node)
            continue
        base = f"{node.name or 'depth_to_space'}_{index}_nhwc"
        nodes += [
            helper.make_node("Transpose", [node.input[0]], [base + "_in"], name=base + "_in",
                             perm=[0, 2, 3, 1]),
            helper.make_node("Shape", [base + "_in"], [base + "_shape_in"], name=base + "_shape"),
            helper.make_node("Mul", [base + "_shape_in", constant(base + "_grow", [1, 2, 2, 1])],
                             [base + "_grown"], name=base + "_grow"),
            helper.make_node("Div", [base + "_grown", constant(base + "_fold", [1, 1, 1, 4])],
                             [base + "_shape_out"], name=base + "_fold"),
            helper.make_node("Reshape", [base + "_in", constant(base + "_rows", [0, 0, 0, 2, -1])],
                             [base + "_rows_split"], name=base + "_split"),
            helper.make_node("Transpose", [base + "_rows_split"], [base + "_interleaved"],
                             name=base + "_interleave", perm=[0, 1, 3, 2, 4]),
            helper.make_node("Reshape", [base + "_interleaved", base + "_shape_out"],
                             [base + "_out"], name=base + "_merge"),
            helper.make_node("Transpose", [base + "_out"], list(node.output), name=base + "_out",
                             perm=[0, 3, 1, 2]),
        ]
    if not added:
        return model
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    return model


def _reader(input_name: str, tiles: np.ndarray):
    """A CalibrationDataReader feeding `tiles` in batches of CALIBRATION_BATCH."""
    from onnxruntime.quantization import CalibrationDataReader

    class TileReader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self.batches, None)

        def rewind(self):
            self.batches = iter({input_name: np.ascontiguousarray(tiles[i:i + CALIBRATION_BATCH])}
                                for i in range(0, len(tiles), CALIBRATION_BATCH))

    return TileReader()


def quantize_onnx(fp32_path: Path, out_path: Path, calibration_tiles: np.ndarray) -> None:
    """Write an int8 (QDQ) version of the fp32 ONNX model at `fp32_path` to `out_path`.

    `calibration_tiles` are float32 N x H x W x 3 model inputs in [0, 1] (see
    calibration_tiles()) from which activation ranges are measured. The fp32 model's
    metadata (the nucleiseg record) is kept. `out_path` is replaced atomically.
    """
    onnx = _require_onnx()
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    tiles = np.asarray(calibration_tiles, np.float32)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or not len(tiles):
        raise UsageError(f"calibration tiles must be N x H x W x 3; got shape {tiles.shape}")
    if not Path(fp32_path).is_file():
        raise file_error(fp32_path, "no such ONNX model file")
    source = onnx.load(str(fp32_path))
    parameters = {i.name for i in source.graph.initializer}
    input_name = next(i.name for i in source.graph.input if i.name not in parameters)
    work = Path(tempfile.mkdtemp(prefix="nucleiseg-quantize-"))
    try:
        # ORT's quant_pre_process without its symbolic shape inference (which needs sympy and
        # fails on tf2onnx's dynamic-shape subgraphs): basic graph optimisation (constant
        # folding, Conv + Mul/Add fusion), then onnx shape inference
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(work / "optimised.onnx")
        ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
        model = rewrite_conv_transpose(onnx.load(str(work / "optimised.onnx")))
        model = onnx.shape_inference.infer_shapes(model)
        add_pre_process_metadata(model)  # done above: silences quantize_static's advice
        onnx.save(model, str(work / "rewritten.onnx"))
        quantize_static(str(work / "rewritten.onnx"), str(work / "quantised.onnx"),
                        _reader(input_name, tiles), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})
        model = sink_dequantize(onnx.load(str(work / "quantised.onnx")))
        model = depth_to_space_channels_last(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    atomic_write(Path(out_path), lambda tmp: onnx.save(model, str(tmp)))

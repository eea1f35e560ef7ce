"""TF-Lite flatbuffers of TF-slim MobileNet v1, float32 or 8-bit quantized.

Parsed with the `tflite` package (the flatbuffer schema, generated code; no TensorFlow).
A TF-slim MobileNet v1 is one chain of ops:

    CONV_2D (stem, 3x3 stride 2), 13 x (DEPTHWISE_CONV_2D 3x3, CONV_2D 1x1), all SAME padding
    with a fused ReLU6; AVERAGE_POOL_2D over the whole map (or MEAN); CONV_2D 1x1 (or
    FULLY_CONNECTED) to 1001 logits; RESHAPE / SQUEEZE; SOFTMAX.

The converter folded BN into each conv's weights and bias. Quantized files store uint8 (or
int8) weights with a scale and zero point per tensor (or per output channel) and int32
biases with scale = input scale x weight scale: real = (q - zero_point) * scale. Conv
weights are OHWI, depthwise weights 1HWC. A model may come in pieces (e.g. an embedding
extractor ending at the pool, then the classifier); each piece's input must be the previous
piece's output (same shape and quantization).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import tflite
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.Padding import Padding
from tflite.TensorType import TensorType

from ..errors import UserError
from .common import NUM_CONVS, STRIDES, ConvWeights, SourceWeights

OP_NAMES = {code: name for name, code in vars(BuiltinOperator).items() if not name.startswith("_")}
ACTIVATIONS = {code: name for name, code in vars(ActivationFunctionType).items() if not name.startswith("_")}
PADDINGS = {code: name for name, code in vars(Padding).items() if not name.startswith("_")}
TYPES = {TensorType.FLOAT32: np.float32, TensorType.FLOAT16: np.float16, TensorType.UINT8: np.uint8,
         TensorType.INT8: np.int8, TensorType.INT32: np.int32, TensorType.INT64: np.int64}
CONVS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
POOLS = {"AVERAGE_POOL_2D", "MEAN"}
PASS_THROUGH = {"RESHAPE", "SQUEEZE", "SOFTMAX", "QUANTIZE", "DEQUANTIZE"}


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype | None
    data: bytes | None          # None: an activation (no constant data)
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dim: int = 0

    def quantization(self) -> tuple | None:
        if self.scale is None:
            return None
        return tuple(np.round(self.scale, 9).tolist()), tuple(self.zero_point.tolist())

    def values(self, fallback_scale: np.ndarray | None = None) -> np.ndarray:
        """Float32 values; quantized integers are dequantized with the tensor's own scale and zero point."""
        array = np.frombuffer(self.data, np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)
        if np.issubdtype(array.dtype, np.floating):
            return array.astype(np.float32)
        scale = self.scale if self.scale is not None else fallback_scale
        if scale is None:
            raise UserError(f"tensor {self.name} holds {array.dtype} weights without quantization parameters")
        zero_point = self.zero_point if self.zero_point is not None else np.zeros_like(scale)
        if scale.size > 1:  # per-channel quantization along quantized_dim
            view = [1] * array.ndim
            view[self.quantized_dim] = -1
            scale, zero_point = scale.reshape(view), zero_point.reshape(view)
        return ((array.astype(np.float64) - zero_point) * scale).astype(np.float32)


@dataclass
class Op:
    name: str
    source: str
    inputs: list[Tensor | None]
    outputs: list[Tensor]
    options: dict = field(default_factory=dict)


def _options(op, name: str) -> dict:
    table = op.BuiltinOptions()
    kind = op.BuiltinOptionsType()
    if table is None:
        return {}
    if kind in (BuiltinOptions.Conv2DOptions, BuiltinOptions.DepthwiseConv2DOptions, BuiltinOptions.Pool2DOptions):
        cls = {BuiltinOptions.Conv2DOptions: tflite.Conv2DOptions,
               BuiltinOptions.DepthwiseConv2DOptions: tflite.DepthwiseConv2DOptions,
               BuiltinOptions.Pool2DOptions: tflite.Pool2DOptions}[kind]
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        out = {"stride": (opts.StrideH(), opts.StrideW()), "padding": PADDINGS.get(opts.Padding()),
               "activation": ACTIVATIONS.get(opts.FusedActivationFunction())}
        if kind == BuiltinOptions.DepthwiseConv2DOptions:
            out["depth_multiplier"] = opts.DepthMultiplier()
        return out
    if kind == BuiltinOptions.FullyConnectedOptions:
        opts = tflite.FullyConnectedOptions()
        opts.Init(table.Bytes, table.Pos)
        return {"activation": ACTIVATIONS.get(opts.FusedActivationFunction())}
    return {}


def _buffer_data(buf: bytes, b) -> bytes | None:
    """A buffer's bytes, wherever the converter put them; None for an activation."""
    if b.DataLength():
        return b.DataAsNumpy().tobytes()
    if b.Offset() > 1:  # large models keep buffers after the flatbuffer
        return buf[b.Offset(): b.Offset() + b.Size()]
    return None


def _quantization(t) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """A tensor's scale, zero point and quantized dimension; (None, None, 0) for a float tensor."""
    q = t.Quantization()
    if q is None or not q.ScaleLength():
        return None, None, 0
    scale = q.ScaleAsNumpy().astype(np.float64)
    zero_point = (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
                  else np.zeros(scale.shape, np.int64))
    return scale, zero_point, q.QuantizedDimension()


def _read_tensor(path: Path, buf: bytes, model, graph, index: int) -> Tensor | None:
    """Tensor `index` of the graph, with its constant data (checked against its shape) and quantization."""
    if index < 0:
        return None  # an optional input left out
    t = graph.Tensors(index)
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    data = _buffer_data(buf, model.Buffers(t.Buffer()))
    dtype = TYPES.get(t.Type())
    if data is not None and (dtype is None or len(data) != int(np.prod(shape)) * np.dtype(dtype).itemsize):
        raise UserError(f"{path}: tensor {t.Name().decode()} should hold {int(np.prod(shape))} values of "
                        f"{dtype.__name__ if dtype else 'an unknown type'} but has {len(data)} bytes: "
                        f"truncated or corrupt")
    scale, zero_point, dim = _quantization(t)
    return Tensor(index, t.Name().decode(errors="replace"), shape, dtype, data, scale, zero_point, dim)


def _read_ops(path: Path, model, graph, tensor) -> list[Op]:
    """The graph's ops in execution order; `tensor` reads a tensor by its index."""
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        # Schema v3a moved builtin codes above 127 to BuiltinCode; older files fill only the deprecated byte.
        name = OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        options = _options(op, name)
        if name == "CUSTOM" and code.CustomCode():  # e.g. TFLite_Detection_PostProcess: options in a flexbuffer
            name = code.CustomCode().decode(errors="replace")
            options = _custom_options(op)
        ops.append(Op(name, str(path), [tensor(int(j)) for j in op.InputsAsNumpy()],
                      [tensor(int(j)) for j in op.OutputsAsNumpy()], options))
    return ops


def _custom_options(op) -> dict:
    from flatbuffers import flexbuffers

    if not op.CustomOptionsLength():
        return {}
    loaded = flexbuffers.Loads(op.CustomOptionsAsNumpy().tobytes())
    return dict(loaded) if isinstance(loaded, dict) else {}


def _walk_graph(path: Path, buf: bytes) -> tuple[list[Op], list[Tensor], list[Tensor]]:
    model = tflite.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() != 1:
        raise UserError(f"{path} has {model.SubgraphsLength()} subgraphs; a MobileNet v1 has one")
    graph = model.Subgraphs(0)
    tensor = partial(_read_tensor, path, buf, model, graph)
    ops = _read_ops(path, model, graph, tensor)
    return ops, [tensor(int(i)) for i in graph.InputsAsNumpy()], [tensor(int(i)) for i in graph.OutputsAsNumpy()]


def _read_piece(path: Path) -> tuple[list[Op], Tensor, Tensor]:
    """The ops of one .tflite file in execution order, its input and its output tensor."""
    ops, inputs, outputs = read_graph(path)
    if len(inputs) != 1 or len(outputs) != 1 or not ops:
        raise UserError(f"{path} has {len(inputs)} inputs, {len(outputs)} outputs and {len(ops)} ops; "
                        f"a MobileNet v1 (or a piece of one) has one input and one output")
    return ops, inputs[0], outputs[0]


def read_graph(path: Path) -> tuple[list[Op], list[Tensor], list[Tensor]]:
    """The ops of a one-graph .tflite file in execution order, its input and its output tensors."""
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise UserError(f"{path} is not a TF-Lite flatbuffer (no 'TFL3' identifier)")
    try:
        return _walk_graph(path, buf)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged flatbuffer fails in many ways while it is walked
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
        raise UserError(f"{path} is not a readable TF-Lite file "
                        f"(truncated or corrupt: reading it raised {kind})") from None


def _check_chain(ops: list[Op], graph_input: Tensor, graph_output: Tensor, path: Path) -> None:
    """One op after another, each reading the previous one's output: no branches."""
    current = graph_input.index
    for op in ops:
        if not op.inputs or op.inputs[0] is None or op.inputs[0].index != current:
            raise UserError(f"{path}: the {op.name} op does not read the previous op's output; MobileNet v1 is a "
                            f"single chain of ops")
        current = op.outputs[0].index
    if current != graph_output.index:
        raise UserError(f"{path}: the last op does not produce the model's output")


def _read_pieces(paths: list[Path]) -> tuple[list[Op], Tensor]:
    """The ops of all pieces, in order, and the first piece's input; each piece must continue the previous one."""
    ops: list[Op] = []
    previous: tuple[Path, Tensor] | None = None
    first_input = None
    for path in paths:
        piece, graph_input, graph_output = _read_piece(path)
        _check_chain(piece, graph_input, graph_output, path)
        if previous is None:
            first_input = graph_input
        else:
            prev_path, prev_out = previous
            if prev_out.shape != graph_input.shape or prev_out.quantization() != graph_input.quantization():
                raise UserError(f"{path} does not continue {prev_path}: its input is {graph_input.shape} "
                                f"{graph_input.quantization()}, the previous piece's output {prev_out.shape} "
                                f"{prev_out.quantization()}; give the pieces in order")
        previous = (path, graph_output)
        ops += piece
    return ops, first_input


def _split_at_pool(ops: list[Op], source: str) -> tuple[list[Op], list[Op]]:
    """The convolutions before the global pool (the body) and after it (the classifier)."""
    body, classifier, pooled = [], [], False
    for op in ops:
        if op.name in CONVS:
            (classifier if pooled else body).append(op)
        elif op.name in POOLS:
            out_shape = op.outputs[0].shape
            if pooled or (len(out_shape) == 4 and out_shape[1:3] != (1, 1)):
                raise UserError(f"{op.source}: the {op.name} op is not one global average pool: not a MobileNet v1")
            pooled = True
        elif op.name not in PASS_THROUGH:
            raise UserError(f"{op.source} holds a {op.name} op, which MobileNet v1 does not have: "
                            f"not a TF-slim MobileNet v1")
    if len(body) != NUM_CONVS or len(classifier) != 1:
        what = "" if pooled else " and no global pool"
        raise UserError(f"{source} holds {len(body)} convolutions before the pool "
                        f"and {len(classifier)} after it{what}, "
                        f"where MobileNet v1 has {NUM_CONVS} and 1: not a (complete) MobileNet v1; give all pieces "
                        f"of a split model, in order")
    return body, classifier


def _conv_problem(op: Op, i: int, depthwise: bool) -> str | None:
    """How body conv `i` differs from TF-slim's MobileNet v1, or None."""
    expected = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
    o = op.options
    if op.name != expected:
        return f"a {op.name} op where MobileNet v1 has {expected}"
    if o.get("stride") != (STRIDES[i], STRIDES[i]):
        return f"stride {o.get('stride')} where MobileNet v1 has {STRIDES[i]}"
    if o.get("padding") != "SAME":
        return f"{o.get('padding')} padding where MobileNet v1 (TF-slim) has SAME"
    if not is_relu6(op):
        return f"activation {o.get('activation')} where MobileNet v1 (TF-slim) has RELU6"
    if depthwise and o.get("depth_multiplier", 1) != 1:
        return f"depth multiplier {o['depth_multiplier']} where MobileNet v1 has 1"
    return None


def is_relu6(op: Op) -> bool:
    """A fused ReLU6, or (quantized files) none fused but an output quantized to exactly [0, 6], which clips
    the same way."""
    if op.options.get("activation") == "RELU6":
        return True
    out = op.outputs[0]
    if op.options.get("activation") not in (None, "NONE") or out.scale is None or out.scale.size != 1:
        return False
    low = float(-out.zero_point[0] * out.scale[0])
    high = float((np.iinfo(out.dtype).max - np.iinfo(out.dtype).min - out.zero_point[0]) * out.scale[0])
    return abs(low) < 1e-6 and abs(high - 6.0) < 0.01


def conv_params(op: Op, what: str) -> ConvWeights:
    """A conv op's float weight (OIHW; depthwise (C, 1, H, W)) and bias; `what` names it in messages."""
    weight_t, bias_t = op.inputs[1], op.inputs[2] if len(op.inputs) > 2 else None
    if weight_t is None or weight_t.data is None or bias_t is None or bias_t.data is None:
        raise UserError(f"{op.source}: {what} has no constant weights and bias: not a frozen TF model")
    weight = weight_t.values()
    if weight.ndim != 4:
        raise UserError(f"{op.source}: {what} weights have shape {weight.shape}, expected 4-d")
    # OHWI -> OIHW; depthwise 1HWC -> (C, 1, H, W).
    weight = weight.transpose(3, 0, 1, 2) if op.name == "DEPTHWISE_CONV_2D" else weight.transpose(0, 3, 1, 2)
    return ConvWeights(weight_t.name.split(";")[0], weight, bias=bias_t.values(_bias_scale(op)))


def body_weights(body: list[Op]) -> list[ConvWeights]:
    """The body's float weights (OIHW) and biases, after checking each conv against MobileNet v1."""
    convs = []
    for i, op in enumerate(body):
        problem = _conv_problem(op, i, i % 2 == 1)
        if problem:
            raise UserError(f"{op.source}: conv {i} of 27 ({op.outputs[0].name}) has {problem}")
        convs.append(conv_params(op, f"conv {i}"))
    return convs


def _classifier_weights(head: Op) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's (K, C) weight and its bias."""
    if head.options.get("activation") not in (None, "NONE") or len(head.inputs) < 3 or head.inputs[2] is None:
        raise UserError(f"{head.source}: the classifier must be a linear conv or fully connected op with a bias")
    fc_weight = head.inputs[1].values()
    fc_weight = fc_weight.reshape(fc_weight.shape[0], -1)  # (K, 1, 1, C) or (K, C) -> (K, C)
    return fc_weight, head.inputs[2].values(_bias_scale(head))


def input_info(first_input: Tensor, path: Path) -> dict:
    """The model input's shape, dtype and quantization, checked against TF-slim's preprocessing."""
    shape = first_input.shape
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise UserError(f"{path}: the input has shape {shape}, expected square RGB images (1, N, N, 3)")
    info = {"shape": list(shape), "dtype": np.dtype(first_input.dtype).name}
    if first_input.scale is not None:
        scale, zero_point = float(first_input.scale[0]), int(first_input.zero_point[0])
        info.update(scale=scale, zero_point=zero_point)
        # TF-slim's quantized input is (x - 128) / 128, within 0.4% of the float models' x / 127.5 - 1.
        if abs(scale * 127.5 - 1) > 0.01 or abs(zero_point - 127.5) > 1:
            raise UserError(f"{path}: the input quantization (scale {scale}, zero point {zero_point}) is not "
                            f"TF-slim's x / 127.5 - 1 (scale 1/128, zero point 128)")
    return info


def read_tflite(paths: list[Path]) -> SourceWeights:
    ops, first_input = _read_pieces(paths)
    source = ", ".join(str(p) for p in paths)
    body, classifier = _split_at_pool(ops, source)
    convs = body_weights(body)
    fc_weight, fc_bias = _classifier_weights(classifier[0])
    input_details = input_info(first_input, paths[0])
    weight_types = sorted({np.dtype(op.inputs[1].dtype).name for op in body + classifier})
    details = {"resolution_from": "input tensor", "pieces": len(paths), "weight_dtype": "/".join(weight_types),
               "dequantized": any(t != "float32" for t in weight_types), "input": input_details,
               "ops": dict(Counter(op.name for op in ops))}
    return SourceWeights(format="tflite", sources=[str(p) for p in paths], convs=convs, fc_weight=fc_weight,
                         fc_bias=fc_bias, resolution=int(first_input.shape[1]), eval_preset="tf", bn_eps=None,
                         details=details)


def _bias_scale(op: Op) -> np.ndarray | None:
    """Where an int32 bias lacks its own scale: input scale x weight scale, as the converter sets it."""
    data, weight = op.inputs[0], op.inputs[1]
    if data.scale is None or weight.scale is None:
        return None
    return data.scale * weight.scale

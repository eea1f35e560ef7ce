"""TF-Lite: written by Google's converter (litert-torch; int8 through its PT2EQuantizer, a fully
integer model with int8 input and output), run by LiteRT (ai-edge-litert, XNNPACK delegate). The
preprocessing JSON is the model's metadata entry `mobilenet_train.preprocessing`. Batch 1, as
TF-Lite models are (litert-torch cannot convert a dynamic batch): the runner calls it once per image."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its progress tree would drown our output
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import litert_torch  # noqa: E402 - reads the variables above
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402
from litert_torch.quantize import pt2e_quantizer_utils  # noqa: E402
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config  # noqa: E402
from litert_torch.quantize.quant_config import QuantConfig  # noqa: E402
from torch import nn  # noqa: E402

from .formats import METADATA_KEY  # noqa: E402
from .prepare import pad_channels_last  # noqa: E402
from .quantize import litert_relu6_fuses_like_relu, pt2e_int8  # noqa: E402

EXAMPLE_BATCH = 1  # the only batch a TF-Lite model takes


def write(model: nn.Module, path: Path, meta: dict, example: torch.Tensor, calibration: torch.Tensor | None,
          max_batch: int) -> None:
    """Google's converter: fp32, or int8 through its PT2E quantizer (per-channel symmetric int8 weights,
    int8 activations, integer input and output). The preprocessing JSON goes into the metadata table."""
    model = pad_channels_last(copy.deepcopy(model))
    with torch.no_grad():
        if calibration is None:
            edge = litert_torch.convert(model, (example,))
        else:
            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            quantized = pt2e_int8(model, example, quantizer, litert_relu6_fuses_like_relu(pt2e_quantizer_utils),
                                  calibration, batch=1, fold_quantize=False)  # traced at batch 1
            edge = litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    path.write_bytes(with_metadata(edge.model_content(), meta))


def write_converted(converted: nn.Module, path: Path, meta: dict, example: torch.Tensor, max_batch: int) -> None:
    """An already quantised PT2E graph (a QAT model after convert_pt2e, its trained ranges) through
    Google's converter as int8, preprocessing in the metadata."""
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        edge = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    path.write_bytes(with_metadata(edge.model_content(), meta))


def with_metadata(content: bytes, meta: dict) -> bytearray:
    """The flatbuffer with the preprocessing JSON added to its metadata table."""
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    flat.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(flat.buffers) - 1
    flat.metadata = [*(flat.metadata or []), entry]
    return flatbuffer_utils.convert_object_to_bytearray(flat)


def runner(path: str | Path, threads: int = 0):
    """LiteRT's interpreter (XNNPACK delegate) as a function NCHW float32 array -> float logits. The
    model takes one image; an int8 model's input is quantised and its output dequantised with the
    scales recorded in the file, as an app does."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    quantize = _input_quantizer(inp)
    out_scale, out_zero = out["quantization"]
    integer_out = np.issubdtype(out["dtype"], np.integer)

    def run(x):
        logits = []
        for image in np.asarray(x, dtype=np.float32):
            interpreter.set_tensor(inp["index"], quantize(image[None]))
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"])
            logits.append((y.astype(np.float32) - out_zero) * out_scale if integer_out else y.copy())
        return np.concatenate(logits)

    return run


def outputs_runner(path: str | Path, threads: int = 0):
    """LiteRT on a file with several outputs (a detector's boxes and scores): NCHW float32 array -> the float
    outputs in the file's order, each batched; an int8 file's input quantised and outputs dequantised."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outs = sorted(interpreter.get_output_details(), key=lambda d: d["name"])  # output_0, output_1, ...
    quantize = _input_quantizer(inp)

    def value(out: dict) -> np.ndarray:
        y = interpreter.get_tensor(out["index"])
        if not np.issubdtype(out["dtype"], np.integer):
            return y.copy()
        scale, zero = out["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def run(x):
        per_image = []
        for image in np.asarray(x, dtype=np.float32):
            interpreter.set_tensor(inp["index"], quantize(image[None]))
            interpreter.invoke()
            per_image.append([value(out) for out in outs])
        return [np.concatenate(parts) for parts in zip(*per_image)]

    return run


def _input_quantizer(inp: dict):
    """float image -> what the model's input takes (itself for a float model)."""
    if not np.issubdtype(inp["dtype"], np.integer):
        return lambda image: image
    in_scale, in_zero = inp["quantization"]
    lo, hi = np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max
    inv_scale = np.float32(1 / in_scale)

    def quantize(image: np.ndarray) -> np.ndarray:
        q = image * inv_scale  # in place from here: a sizeable share of a small model's time
        np.rint(q, out=q)
        q += in_zero
        np.clip(q, lo, hi, out=q)
        return q.astype(inp["dtype"])

    return quantize


def read_metadata(path: str | Path) -> dict:
    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_KEY:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    raise KeyError(f"{path} has no {METADATA_KEY} metadata")

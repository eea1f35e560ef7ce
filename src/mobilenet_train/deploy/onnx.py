"""ONNX: written by torch.onnx (dynamo), int8 by ONNX Runtime's static QDQ quantisation, run by
ONNX Runtime on the CPU. The preprocessing is in metadata_props: `mobilenet_train.preprocessing`
(the JSON) plus flat keys (input_size, mean, std, normalization, ...); the batch axis is dynamic."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from .formats import METADATA_KEY

EXAMPLE_BATCH = 2  # the batch the exporter traces at (the batch axis is dynamic)
FLAT_KEYS = ("input_size", "input_layout", "eval_preset", "resize", "normalization", "normalize", "mean", "std",
             "num_classes", "precision")


def write(model: nn.Module, path: Path, meta: dict, example: torch.Tensor, calibration: torch.Tensor | None,
          max_batch: int) -> None:
    """The model as ONNX (int8 QDQ when calibration images are given), preprocessing in its metadata."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    fp32 = path.with_name(path.name + ".fp32") if calibration is not None else path
    try:
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes={"x": {0: batch}},
                                        input_names=["input"], output_names=["logits"], optimize=True, verbose=False)
        program.save(str(fp32))
        if calibration is not None:
            quantize_onnx(fp32, path, calibration)
    finally:
        if fp32 != path and fp32.exists():
            fp32.unlink()
    write_metadata(path, meta)


def write_converted(converted: nn.Module, path: Path, meta: dict, example: torch.Tensor, max_batch: int) -> None:
    """An already quantised PT2E graph (a QAT model after convert_pt2e, its trained ranges) as ONNX: its
    quantize/dequantize pairs become QuantizeLinear/DequantizeLinear (QDQ, as quantize_static writes)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(converted, (example,), dynamo=True, dynamic_shapes={"x": {0: batch}},
                                    input_names=["input"], output_names=["logits"], optimize=True, verbose=False)
    program.save(str(path))
    write_metadata(path, meta)


def write_metadata(path: Path, meta: dict) -> None:
    proto = onnx.load(str(path))
    flat = {key: json.dumps(meta[key]) if isinstance(meta[key], list) else meta[key] for key in FLAT_KEYS}
    del proto.metadata_props[:]
    for key, value in {**flat, METADATA_KEY: json.dumps(meta)}.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.doc_string = (f"MobileNet v1 exported by {meta['exported_by']}; "
                        f"preprocessing in metadata_props['{METADATA_KEY}']")
    onnx.save(proto, str(path))


class _Images(CalibrationDataReader):
    """Calibration images one at a time, as ONNX Runtime's calibrator reads them."""

    def __init__(self, images: torch.Tensor):
        self.items = iter([{"input": images[i : i + 1].numpy()} for i in range(len(images))])

    def get_next(self):
        return next(self.items, None)


def quantize_onnx(src: Path, dst: Path, calibration: torch.Tensor) -> None:
    """ONNX Runtime static QDQ quantisation: per-channel int8 weights, uint8 activations, MinMax ranges."""
    pre = src.with_name(src.name + ".pre")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), _Images(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        if pre.exists():
            pre.unlink()


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (all cores)
    options.inter_op_num_threads = 1
    return options


def runner(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session as a function NCHW float32 array -> logits."""
    session = ort.InferenceSession(str(path), _options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def read_metadata(path: str | Path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])


def profile_events(path: Path, threads: int, calls: int, batch: int) -> list[dict]:
    """ONNX Runtime's own profile (its JSON events) of `calls` runs of the model on a random batch."""
    options = _options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="mobilenet-profile-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal((batch, *inp.shape[1:])).astype(np.float32)
        for _ in range(calls):
            session.run(None, {inp.name: x})
        return json.loads(Path(session.end_profiling()).read_text())

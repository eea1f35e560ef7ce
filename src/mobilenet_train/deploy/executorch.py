"""ExecuTorch: a .pte program lowered to XNNPACK (int8 through PT2E with XNNPACKQuantizer), run by
ExecuTorch's Python runtime. ExecuTorch values carry no strings, so the preprocessing is in constant
methods: `preprocessing_json` returns the JSON as uint8 bytes, `input_size` and `num_classes` ints.
The batch is dynamic up to max_batch (ExecuTorch plans its memory for the largest batch, so keep it
modest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from executorch.exir import to_edge_transform_and_lower
from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
from executorch.runtime import Runtime
from torch import nn

from .quantize import pt2e_int8, relu6_fuses_like_relu

EXAMPLE_BATCH = 2  # the batch the exporter traces at (the batch axis is dynamic up to max_batch)


def write(model: nn.Module, path: Path, meta: dict, example: torch.Tensor, calibration: torch.Tensor | None,
          max_batch: int) -> None:
    """The model lowered to XNNPACK (int8 when calibration images are given), preprocessing in constant methods."""
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=max(max_batch, EXAMPLE_BATCH))}}
    if calibration is not None:
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        model = pt2e_int8(model, example, quantizer, relu6_fuses_like_relu(xnnpack_quantizer_utils), calibration,
                          max_batch, dynamic_shapes=shapes)
    _lower(model, path, meta, example, shapes)


def write_converted(converted: nn.Module, path: Path, meta: dict, example: torch.Tensor, max_batch: int) -> None:
    """An already quantised PT2E graph (a QAT model after convert_pt2e, its trained ranges) lowered to XNNPACK."""
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=max(max_batch, EXAMPLE_BATCH))}}
    _lower(converted, path, meta, example, shapes)


def _lower(model: nn.Module, path: Path, meta: dict, example: torch.Tensor, shapes: dict) -> None:
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    constants = {"preprocessing_json": torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8),
                 "input_size": int(meta["input_size"]), "num_classes": int(meta["num_classes"])}
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constants)
    path.write_bytes(lowered.to_executorch().buffer)


def set_threads(threads: int) -> None:
    """XNNPACK's thread pool is process-wide in ExecuTorch's Python runtime (0: all cores)."""
    _unsafe_reset_threadpool(threads or os.cpu_count() or 1)


def runner(path: str | Path, threads: int = 0):
    """ExecuTorch's Python runtime as a function NCHW float32 array -> logits."""
    set_threads(threads)
    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    # The largest batch memory was planned for (ExecuTorch 1.5 plans at most 15 even when asked for more).
    capacity = program.metadata("forward").input_tensor_meta(0).sizes()[0]

    def run(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return np.concatenate([method.execute([x[i : i + capacity]])[0].numpy() for i in range(0, len(x), capacity)])

    return run


def read_metadata(path: str | Path) -> dict:
    program = Runtime.get().load_program(str(path))
    raw = program.load_method("preprocessing_json").execute([])[0]
    return json.loads(bytes(raw.numpy().tolist()).decode())

"""int8 post-training quantisation, common to the formats: bias correction, the PT2E flow, and the
fixes that make PT2E quantizers treat ReLU6 as they treat ReLU.

Each format quantises with its own tool: ONNX Runtime's `quantize_static` (onnx.py), PT2E with
ExecuTorch's XNNPACKQuantizer (executorch.py) or litert-torch's PT2EQuantizer (tflite.py), all
calibrated on real images with per-channel int8 weights.
"""

from __future__ import annotations

import contextlib
import copy
from types import ModuleType

import torch
from torch import nn


def int8_weight_error(w: torch.Tensor) -> torch.Tensor:
    """Rounding error of symmetric per-output-channel int8 weights, [-127, 127]: the scheme of both
    ONNX Runtime's QInt8 per-channel weights and XNNPACKQuantizer's."""
    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp(min=1e-12) / 127
    return (w / scale).round().clamp(-127, 127) * scale - w


def _input_means(model: nn.Module, layers: list[nn.Module], calibration: torch.Tensor, batch: int) -> dict:
    """Each layer's mean input per channel over the calibration images."""
    sums: dict[nn.Module, torch.Tensor] = {}

    def record(module, inputs):
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3)) if x.dim() == 4 else x.mean(dim=0)
        sums[module] = sums.get(module, 0) + mean * len(x)

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        for i in range(0, len(calibration), batch):
            model(calibration[i : i + batch])
    finally:
        for h in hooks:
            h.remove()
    return {m: s / len(calibration) for m, s in sums.items()}


@torch.no_grad()
def correct_int8_bias(model: nn.Module, calibration: torch.Tensor, batch: int = 16) -> nn.Module:
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2): int8
    weight rounding shifts each output channel's mean by (W_int8 - W) . E[x]; subtract that shift
    from the bias, E[x] being each input channel's mean over the calibration images. A copy of
    `model` is returned."""
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    means = _input_means(model, layers, calibration, batch)
    for m in layers:
        err = int8_weight_error(m.weight)
        if isinstance(m, nn.Linear):
            shift = err @ means[m]
        elif m.groups == 1:
            shift = (err.sum(dim=(2, 3)) * means[m][None, :]).sum(dim=1)
        else:  # depthwise (groups == channels): one input channel per output channel
            shift = err.sum(dim=(1, 2, 3)) * means[m]
        m.bias -= shift
    return model


def pt2e_int8(model: nn.Module, example: torch.Tensor, quantizer, annotation_fix, calibration: torch.Tensor,
              batch: int, dynamic_shapes=None, **convert_options) -> nn.Module:
    """PT2E static quantisation: export, insert the quantizer's observers (under `annotation_fix`),
    run the calibration images through in batches of `batch`, convert."""
    # torchao comes with executorch and litert-torch, the formats that use PT2E; an ONNX-only install has none.
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        with annotation_fix:
            graph = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes).module()
            prepared = prepare_pt2e(graph, quantizer)
        for i in range(0, len(calibration), batch):
            prepared(calibration[i : i + batch])
        return convert_pt2e(prepared, **convert_options)


def is_relu6_node(node) -> bool:
    """An FX node computing ReLU6 (hardtanh clamped to [0, 6])."""
    return (node.op == "call_function"
            and node.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
            and [float(a) for a in node.args[1:3]] == [0.0, 6.0])


@contextlib.contextmanager
def relu6_fuses_like_relu(utils: ModuleType):
    """XNNPACKQuantizer (`utils`: its xnnpack_quantizer_utils) annotates conv+ReLU as one unit but
    quantises a conv followed by ReLU6 (hardtanh) at the conv's output, over its whole pre-activation
    range, which costs several points of top-1. XNNPACK fuses conv+hardtanh when lowering anyway, so
    let the quantizer treat ReLU6 as it treats ReLU: one observer after the clamp, range [0, 6]."""
    original = utils.is_relu_node

    def is_relu_or_relu6(node) -> bool:
        return original(node) or is_relu6_node(node)

    utils.is_relu_node = is_relu_or_relu6
    try:
        yield
    finally:
        utils.is_relu_node = original


@contextlib.contextmanager
def litert_relu6_fuses_like_relu(utils: ModuleType):
    """litert-torch's PT2EQuantizer (`utils`: its pt2e_quantizer_utils) has the same blind spot as
    XNNPACKQuantizer, worse: it makes ReLU6 share the conv's output observer, and the converted model
    is garbage. Its conv+ReLU annotator matches ReLU nodes by their target, so ReLU6 nodes show it a
    ReLU target while it annotates (one observer after the clamp, as for ReLU; TF-Lite fuses RELU6
    into the conv)."""
    original = utils.OP_TO_ANNOTATOR["conv_relu"]

    def annotate_conv_relu_or_relu6(gm, config, filter_fn=None):
        nodes = [n for n in gm.graph.nodes if is_relu6_node(n)]
        targets = [n.target for n in nodes]
        for n in nodes:
            n.target = torch.ops.aten.relu.default
        try:
            return original(gm, config, filter_fn)
        finally:
            for n, target in zip(nodes, targets):
                n.target = target

    utils.OP_TO_ANNOTATOR["conv_relu"] = annotate_conv_relu_or_relu6
    try:
        yield
    finally:
        utils.OP_TO_ANNOTATOR["conv_relu"] = original

"""Quantization-aware training (`qat.enabled`, `+experiment=qat`): the float model captured with
torch.export and prepared by PT2E (`prepare_qat_pt2e`) with the quantizer of the export it is
meant for (`qat.target`): litert-torch's PT2EQuantizer for TF-Lite, ExecuTorch's XNNPACKQuantizer
for ExecuTorch and ONNX Runtime, per-channel symmetric int8 weights, int8 activations.

PT2E simulates BN folded into each conv (the weight scaled by gamma / running std, as the
converter will fold it) and keeps BN in the graph for its batch statistics until
`qat.freeze_bn_steps` optimizer steps are done; from `qat.freeze_observer_steps` the
activation and weight ranges stop moving. ReLU6 is annotated as ReLU is (one observer after
the clamp), as the landed int8 exports do it.

The prepared graph is rebuilt from the float model and the config alone, deterministically, so
a QAT checkpoint holds only its state dict (`QatModel.state_dict()`): weights, BN statistics,
observer ranges, fake-quant switches. Freezing is a function of the step and is applied again
on resume.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import torch
from torch import nn

from .deploy.quantize import is_relu6_node
from .errors import UserError
from .model import MobileNetV1, ModelArgs

TARGETS = ("tflite", "executorch", "onnx")


def is_qat(ckpt: dict) -> bool:
    """Whether a checkpoint holds a QAT model's state (config qat.enabled)."""
    return bool((ckpt.get("config") or {}).get("qat", {}).get("enabled"))


def quantizer_for(target: str):
    """The PT2E quantizer the `target` export uses, configured for QAT (weights: _exportable_weights)."""
    if target not in TARGETS:
        raise UserError(f"qat.target={target} is unknown: use one of {', '.join(TARGETS)}")
    try:
        if target == "tflite":
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer as Quantizer
            from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
        else:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer as Quantizer
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    except ImportError as e:
        raise UserError(f"qat.target={target} needs the quantizer of its export ({e.name} is not installed): "
                        f"pip install 'mobilenet-train[deploy]'") from None
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    return Quantizer().set_global(_exportable_weights(config))


def _exportable_weights(config):
    """`config` with weights fake-quantized as the export will quantize them.

    Both quantizers train weights with torch's fused moving-average fake-quant kernel, which falls back to
    an affine grid (zero point +-127, twice the resolution) for any channel whose weights share one sign,
    as many depthwise 3x3 filters do, and otherwise divides the range by 127.5. Neither survives
    convert_pt2e, which takes the observer's symmetric qparams (zero point 0, range / 127, the only
    per-channel int8 weights XNNPACK and TF-Lite run): the int8 file then computes with weights the
    training never saw. The plain FakeQuantize asks the same observer as convert_pt2e does."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MovingAveragePerChannelMinMaxObserver

    ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, eps=2**-12)
    return dataclasses.replace(config, weight=dataclasses.replace(config.weight, observer_or_fake_quant_ctr=ctr))


@contextlib.contextmanager
def relu6_as_relu(gm: torch.fx.GraphModule):
    """While the quantizer annotates, ReLU6 nodes look like ReLU nodes (target and single argument), so
    its conv[-bn]-relu patterns match them: one observer after the clamp, range [0, 6], none between
    conv and clamp (the converters fuse the clamp into the conv). Restored afterwards."""
    nodes = [(n, n.target, n.args) for n in gm.graph.nodes if is_relu6_node(n)]
    for n, _, args in nodes:
        n.target, n.args = torch.ops.aten.relu.default, args[:1]
    try:
        yield
    finally:
        for n, target, args in nodes:
            n.target, n.args = target, args


@contextlib.contextmanager
def _litert_patterns_as_modules(target: str):
    """litert-torch's conv-bn(-relu) QAT annotator hands torchao's pattern tracer a plain function, which
    the installed torchao only takes as a module: wrap it (torchao's WrapperModule) while annotating."""
    if target != "tflite":
        yield
        return
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = utils._get_aten_graph_module_for_pattern

    def traced(pattern, example_inputs, is_cuda=False, **kwargs):
        pattern = pattern if isinstance(pattern, nn.Module) else WrapperModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    utils._get_aten_graph_module_for_pattern = traced
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def _annotating_relu6_as_relu(quantizer, target: str):
    original = quantizer.annotate

    def annotate(gm):
        with relu6_as_relu(gm), _litert_patterns_as_modules(target):
            return original(gm)

    quantizer.annotate = annotate
    return quantizer


class QatModel(nn.Module):
    """The fake-quantized model the trainer trains: the prepared PT2E graph (`qat`), whose BN and dropout
    switch between train and eval by graph rewrites (exported graphs have no train()/eval() of their
    own); with `bn_frozen`, BN uses its running statistics in train mode too."""

    def __init__(self, graph: torch.fx.GraphModule, param_kinds: dict[str, str]):
        super().__init__()
        self.qat = graph
        self.param_kinds = {f"qat.{k}": v for k, v in param_kinds.items()}  # for the weight-decay groups
        self.bn_frozen = False
        self.observers_frozen = False
        self._bn_eval = False  # the graph's BN uses running statistics (exported in train mode: no)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qat(x)

    def train(self, mode: bool = True):
        self.training = mode
        self._set_graph_mode()
        self._set_observing(mode and not self.observers_frozen)  # evaluating must not move the ranges
        return self

    def _set_observing(self, on: bool) -> None:
        from torchao.quantization.pt2e import disable_observer, enable_observer

        self.qat.apply(enable_observer if on else disable_observer)

    def _set_graph_mode(self) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        # The graph has no dropout: only BN differs, so a rewrite (slow: pattern matching) only when BN changes.
        bn_eval = not self.training or self.bn_frozen
        if bn_eval == self._bn_eval:
            return
        (move_exported_model_to_eval if bn_eval else move_exported_model_to_train)(self.qat)
        self._bn_eval = bn_eval

    def freeze_bn(self) -> None:
        self.bn_frozen = True
        self._set_graph_mode()

    def freeze_observers(self) -> None:
        self.observers_frozen = True
        self._set_observing(False)


def prepare(model: MobileNetV1, qcfg) -> QatModel:
    """The float `model` (CPU, its weights loaded) as a QatModel for `qcfg.target`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .deploy.prepare import pad_channels_last
    from .optim import classify_params

    kinds = classify_params(model)
    quantizer = _annotating_relu6_as_relu(quantizer_for(str(qcfg.target)), str(qcfg.target))
    if qcfg.target == "tflite":
        model = pad_channels_last(model)  # the padding TF-Lite converts best (same numbers, same state dict)
    model.dropout = nn.Identity()  # a short fine-tune of a trained model: no dropout, and none left in the graph
    res = model.args.resolution
    example = torch.zeros(2, 3, res, res)
    batch = torch.export.Dim("batch", min=1, max=4096)
    model.train()
    graph = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}}).module()
    return QatModel(prepare_qat_pt2e(graph, quantizer), kinds)


def apply_freezing(model: QatModel, step: int, qcfg) -> None:
    """BN statistics and observers frozen once their step has come (idempotent)."""
    if step >= int(qcfg.freeze_bn_steps) and not model.bn_frozen:
        model.freeze_bn()
    if step >= int(qcfg.freeze_observer_steps):
        model.freeze_observers()


def _report_trained_qparams(graph: torch.fx.GraphModule) -> None:
    """Each activation fake-quant (affine) of `graph` reports to convert_pt2e the scale and zero point it
    trained with (its buffers, written by torch's fused kernel), not the ones its observer would compute
    again from the same ranges in Python (pytorch/ao#4824: the two can differ; the installed torchao has no
    `use_kernel_params`). Weights (symmetric) train with the observer's own qparams: _exportable_weights."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    for m in graph.modules():
        if isinstance(m, FakeQuantizeBase) and getattr(m, "qscheme", None) in (torch.per_tensor_affine,
                                                                              torch.per_channel_affine):
            m.calculate_qparams = lambda m=m: (m.scale.detach().clone(), m.zero_point.detach().clone())


def convert(model: QatModel, **options) -> torch.fx.GraphModule:
    """The int8 PT2E graph of a trained QatModel (from a copy: `model` keeps training or scoring), quantized
    with exactly the ranges its fake-quantized graph computes with. `options` go to convert_pt2e."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = copy.deepcopy(model.qat)
    _report_trained_qparams(graph)
    return convert_pt2e(graph, **options)


def model_from_checkpoint(ckpt: dict) -> QatModel:
    """A QAT checkpoint's model, rebuilt as it was trained, in eval mode."""
    from .config import typed_config

    if not is_qat(ckpt):
        raise UserError("this checkpoint holds a float model, not a QAT one: train it with +experiment=qat "
                        "model.init=CKPT first")
    cfg = typed_config(ckpt["config"])
    model = prepare(MobileNetV1(ModelArgs(**ckpt["model_args"])), cfg.qat)
    model.load_state_dict(ckpt["model"])
    apply_freezing(model, int(ckpt.get("step") or 0), cfg.qat)
    return model.eval()

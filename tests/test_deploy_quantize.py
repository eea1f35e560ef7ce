"""deploy/quantize.py: bias correction, the ReLU6 annotation fix, int8 accuracy of Google's weights."""

from __future__ import annotations

import pytest
import torch
from helpers import SAMPLES, shared_or_skip, tflite_operators

from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.formats import FORMATS
from mobilenet_train.deploy.latency import random_checkpoint
from mobilenet_train.deploy.quantize import correct_int8_bias, int8_weight_error


def test_bias_correction_removes_the_mean_shift_of_int8_weights():
    torch.manual_seed(0)
    # No padding: zeros at the borders make the correction approximate there, exact elsewhere.
    for layer, shape in [(torch.nn.Conv2d(8, 8, 3, groups=8), (64, 8, 10, 10)),
                         (torch.nn.Conv2d(8, 16, 1), (64, 8, 10, 10)), (torch.nn.Linear(16, 10), (64, 16))]:
        x = torch.rand(shape) + 0.5  # positive inputs, as after a ReLU: rounding shifts the mean
        corrected = correct_int8_bias(torch.nn.Sequential(layer), x)[0]
        with torch.no_grad():
            dims = (0, 2, 3) if x.dim() == 4 else (0,)
            want = layer(x).mean(dims)
            shift = {}
            for name, m in (("plain", layer), ("corrected", corrected)):
                w = m.weight + int8_weight_error(m.weight)
                out = (torch.nn.functional.linear(x, w, m.bias) if isinstance(m, torch.nn.Linear)
                       else m._conv_forward(x, w, m.bias))
                shift[name] = (out.mean(dims) - want).abs().max()
        assert shift["corrected"] < 0.05 * shift["plain"], (layer, shift)


def test_tflite_int8_relu6_is_quantised_after_the_clamp(tmp_path):
    """litert-torch's quantizer, left alone, makes ReLU6 share the conv's observer: every conv output is
    then quantised over its pre-activation range (zero points near 0, ranges of 8-17; the Keras 0.75_224
    weights score 3.5% top-1). Annotated like ReLU, each fused conv+ReLU6 output spans [0, <= 6]."""
    ckpt = random_checkpoint(["model.alpha=0.25", "model.resolution=64", "model.activation=relu6",
                              "model.num_classes=10", "data.num_classes=10"], tmp_path / "relu6.pt")
    r = export(str(ckpt), "tflite", "int8", out=str(tmp_path / "q.tflite"), num_calibration=16, num_verify=2,
               min_cosine=0.0)
    conv_outputs = [graph.tensors[op.outputs[0]].quantization for name, op, graph in tflite_operators(r.out)
                    if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(conv_outputs) == 27
    for q in conv_outputs:
        assert int(q.zeroPoint[0]) == -128 and float(q.scale[0]) * 255 <= 6.0 + 1e-3, (q.zeroPoint, q.scale)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "executorch", "tflite"])
def test_int8_keras_weights_keep_top1(fmt, tmp_path):
    """Keras 0.75_224, imported, int8 through our flow: within 1.5 points of fp32 on the 1000 samples."""
    from mobilenet_train.importer import import_weights

    src = shared_or_skip("weights", "keras-tfjs-mobilenet_v1_0.75_224")
    samples = shared_or_skip(*SAMPLES)
    ckpt = tmp_path / "keras.pt"
    import_weights([str(src)], str(ckpt))
    r = export(str(ckpt), fmt, "int8", out=str(tmp_path / f"q{FORMATS[fmt]}"), calibration=str(samples),
               eval_dir=str(samples))
    a = r.accuracy
    assert a["num_images"] == 1000 and a["pytorch_fp32_top1"] == pytest.approx(82.4, abs=0.5)
    assert a["exported_top1"] >= a["pytorch_fp32_top1"] - 1.5, a

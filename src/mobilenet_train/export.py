"""`mobilenet-export CKPT --format onnx|executorch|tflite [--quantize int8] [key=value ...]`: ship a checkpoint.

The model is put in eval mode and every BatchNorm is folded into the conv before it (the
conv gains a bias), so the exported graph is conv -> ReLU all the way. The checkpoint's own
eval preprocessing (input size, resize/crop, mean/std, class names) is recorded in the file:

    ONNX        metadata_props: `mobilenet_train.preprocessing` (the JSON below) plus flat keys
                (input_size, mean, std, normalization, ...); the batch axis is dynamic.
    ExecuTorch  constant methods of the .pte program (lowered to XNNPACK): `preprocessing_json`
                returns the same JSON as uint8 bytes (ExecuTorch values carry no strings),
                `input_size` and `num_classes` return ints. Batch is dynamic up to max_batch
                (ExecuTorch plans its memory for the largest batch, so keep it modest).
    TF-Lite     written by Google's converter (litert-torch), run by LiteRT (ai-edge-litert,
                XNNPACK delegate); the JSON is the model's metadata entry
                `mobilenet_train.preprocessing`. Batch 1, as TF-Lite models are (litert-torch
                cannot convert a dynamic batch); the runner calls it once per image.

After writing, the file runs in its own runtime (onnxruntime / ExecuTorch's Python runtime / LiteRT) on
a few real images of the checkpoint's data (generated ones when it has none) and is deleted
again, exit 2, if its logits differ from PyTorch's by more than 1e-4 relative (fp32: max
|difference| / max |PyTorch logit|) or the top-1 class differs. Quantisation itself moves
logits by 10-30% of their range, so an int8 export is held to the direction of the logit
vector instead: cosine similarity >= INT8_MIN_COSINE with fp32 PyTorch on every image
(measured: >= 0.977 on real photos, >= 0.93 on generated ones; a broken graph lands near 0).

--quantize int8: post-training static quantisation calibrated on real images with the
checkpoint's eval preprocessing, per-channel int8 weights: PT2E with ExecuTorch's
XNNPACKQuantizer, ONNX Runtime's QDQ `quantize_static`, or PT2E with litert-torch's PT2EQuantizer
(a fully integer TF-Lite model: int8 input and output, with their scales in the file). Before quantising, each layer's bias
is corrected for the mean shift its int8 weight rounding causes (empirical bias correction).
`eval=DIR` (an ImageFolder of labelled images) reports PyTorch fp32 top-1 against the exported
model's top-1 on it.

Options (key=value): out=PATH, calibration=DIR, num_calibration=N (100), eval=DIR,
num_verify=N (8), max_batch=N (ExecuTorch, 8).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError, fail

log = logging.getLogger("mobilenet_train")

PROG = "mobilenet-export"
FORMATS = {"onnx": ".onnx", "executorch": ".pte", "tflite": ".tflite"}
# The Python packages (import names) each format needs to write the file and to run it.
PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "executorch": ("executorch",),
            "tflite": ("litert_torch", "ai_edge_litert")}
RUNTIMES = {"onnx": "ONNX Runtime", "executorch": "ExecuTorch (XNNPACK)", "tflite": "LiteRT (XNNPACK)"}
QUANTIZE = ("int8",)
FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.9
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
OPTIONS = {"out": None, "calibration": None, "num_calibration": 100, "eval": None, "num_verify": 8, "max_batch": 8}
METADATA_KEY = "mobilenet_train.preprocessing"


# ----------------------------------------------------------------------------- model


def missing_packages(fmt: str) -> list[str]:
    """The Python packages of `fmt` that are not installed."""
    return [p for p in PACKAGES[fmt] if importlib.util.find_spec(p) is None]


def require(fmt: str) -> None:
    """A clear error when the runtime packages of `fmt` are not installed."""
    missing = missing_packages(fmt)
    if missing:
        raise UserError(f"--format {fmt} needs the Python package(s) {', '.join(missing)}, which are not installed: "
                        f"pip install 'mobilenet-train[deploy]'")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into its conv (in place): conv -> act, as TF-Lite models are."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .model import ConvBNAct

    model.eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)  # keeps the conv's class (TF-same padding)
            m.bn = nn.Identity()
    return model


class _ChannelsLastTFSamePad(nn.Module):
    """TFSamePad's padding, applied on the NHWC view of the tensor (see pad_channels_last)."""

    def __init__(self, same_pad: nn.Module):
        super().__init__()
        self.same_pad = same_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self.same_pad._pad(x.shape[-2])
        left, right = self.same_pad._pad(x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, left, right, top, bottom)).permute(0, 3, 1, 2)


def pad_channels_last(model: nn.Module) -> nn.Module:
    """TensorFlow-SAME padding (`tf_same`, as imported Google weights have) in the form TF-Lite converts
    best, in place; the numbers are identical. litert-torch converts the graph to NHWC but keeps a
    constant pad in NCHW, between two TRANSPOSEs (27 in the imported 0.25_128 model), and int8 adds a
    requantising QUANTIZE after each pad. A stride-1 conv pads symmetrically, so it becomes a plain
    padded conv; a stride-2 conv pads on the NHWC view, where the permutes cancel and TF-Lite folds
    the pad into a SAME conv. The result has the op list of Google's own file (0.25_128 int8 on one
    core: 0.49 -> 0.29 ms)."""
    from .model import Conv2dTFSame

    for m in model.modules():
        if not isinstance(m, Conv2dTFSame):
            continue
        if m.stride == (1, 1) and all(k % 2 for k in m.kernel_size):
            m.padding = tuple(k // 2 for k in m.kernel_size)  # nn.Conv2d pads symmetrically itself
            m.same_pad = nn.Identity()
        else:
            m.same_pad = _ChannelsLastTFSamePad(m.same_pad)
    return model


def deploy_model(ckpt: dict) -> nn.Module:
    """The checkpoint's model, eval mode, BN folded."""
    from .engine import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    return fold_batchnorm(model)


# ----------------------------------------------------------------------------- preprocessing


def preprocessing(ckpt: dict) -> dict:
    """What a deployment must do to an RGB image before the model: the checkpoint's eval preset."""
    from .data import NORMALIZATION, eval_resize_size

    data, args = ckpt["config"]["data"], ckpt["model_args"]
    resolution = int(args["resolution"])
    preset = data.get("eval_preset", "default")
    fraction = float(data.get("eval_crop_fraction", 0.875))
    steps = {
        "default": f"resize the shorter side to {eval_resize_size(resolution, fraction)} ({data.get('interpolation', 'bilinear')}, "
                   f"antialiased), centre crop {resolution}x{resolution}",
        "tf": f"keep the central {fraction:g} of each side, resize to {resolution}x{resolution} (bilinear, antialiased)",
        "keras": f"resize the whole image to {resolution}x{resolution} (bilinear, antialiased)",
    }
    mean, std = NORMALIZATION[data["normalization"]]
    classes = ckpt.get("classes")
    return {
        "input_size": resolution,
        "input_layout": "NCHW float32, RGB",
        "eval_preset": preset,
        "resize": steps.get(preset, preset),
        "crop_fraction": fraction,
        "interpolation": data.get("interpolation", "bilinear"),
        "normalization": data["normalization"],
        "normalize": "x / 127.5 - 1" if data["normalization"] == "inception" else "(x / 255 - mean) / std",
        "mean": list(mean),
        "std": list(std),
        "num_classes": int(args["num_classes"]),
        "classes": list(classes) if classes else None,
        "model_args": dict(args),
    }


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (every class of a sorted ImageFolder, not the first few)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def load_images(paths: list[Path], ckpt: dict) -> torch.Tensor:
    """Images -> the normalised float NCHW batch the model takes, with the checkpoint's eval preprocessing."""
    from omegaconf import OmegaConf
    from PIL import Image

    from .data import NORMALIZATION, eval_transform

    data = OmegaConf.create(ckpt["config"]["data"])
    transform = eval_transform(data, int(ckpt["model_args"]["resolution"]))
    batch = []
    for path in paths:
        try:
            with Image.open(path) as im:
                batch.append(transform(im.convert("RGB")))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from None
    return normalize(torch.stack(batch), data.normalization)


def normalize(images: torch.Tensor, normalization: str) -> torch.Tensor:
    from .data import NORMALIZATION

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255.0 for v in NORMALIZATION[normalization])
    return (images.float() - mean) / std


def generated_images(n: int, ckpt: dict, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (noise upsampled): stand-ins when the checkpoint has no data."""
    res = int(ckpt["model_args"]["resolution"])
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g) * 255
    images = torch.nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    return normalize(images.round(), ckpt["config"]["data"]["normalization"])


def checkpoint_images(ckpt: dict, split: str = "val") -> list[Path]:
    """Image files of the checkpoint's own dataset (a split of data.root, or `shapes` regenerated); [] if none."""
    from omegaconf import OmegaConf

    from .data import resolve_root

    data = OmegaConf.create(ckpt["config"]["data"])
    if data.name == "fake" or (data.name != "shapes" and not data.root):
        return []
    try:
        root = resolve_root(data)
    except UserError:
        return []
    for name in (data.get(f"{split}_split", split), data.get("val_split", "val")):
        if (root / name).is_dir():
            return image_files(root / name)
    return []


def sample_inputs(ckpt: dict, n: int, folder: str | None = None, split: str = "val") -> tuple[torch.Tensor, str]:
    """n images (folder, else the checkpoint's data, else generated) and where they came from."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise UserError(f"{folder} is not a directory of images")
        files = image_files(Path(folder))
        if not files:
            raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return load_images(spread(files, n), ckpt), f"{min(n, len(files))} images from {folder}"
    files = checkpoint_images(ckpt, split)
    if files:
        return load_images(spread(files, n), ckpt), f"{min(n, len(files))} images of the checkpoint's data"
    return generated_images(n, ckpt), f"{n} generated images (the checkpoint's data is not here)"


# ----------------------------------------------------------------------------- runtimes


def onnx_session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session as a function NCHW float32 array -> logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (all cores)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def set_executorch_threads(threads: int) -> None:
    """XNNPACK's thread pool is process-wide in ExecuTorch's Python runtime."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads or os.cpu_count() or 1)


def executorch_method(path: str | Path, threads: int = 0):
    """ExecuTorch's Python runtime as a function NCHW float32 array -> logits."""
    from executorch.runtime import Runtime

    set_executorch_threads(threads)
    program = Runtime.get().load_program(str(path))
    method = program.load_method("forward")
    # The largest batch memory was planned for (ExecuTorch 1.5 plans at most 15 even when asked for more).
    capacity = program.metadata("forward").input_tensor_meta(0).sizes()[0]

    def run(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return np.concatenate([method.execute([x[i : i + capacity]])[0].numpy() for i in range(0, len(x), capacity)])

    return run


def litert_interpreter(path: str | Path, threads: int = 0):
    """LiteRT's interpreter (XNNPACK delegate) as a function NCHW float32 array -> float logits. The
    model takes one image; an int8 model's input is quantised and its output dequantised with the
    scales recorded in the file, as an app does."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    integer_in = np.issubdtype(inp["dtype"], np.integer)
    integer_out = np.issubdtype(out["dtype"], np.integer)
    lo, hi = (np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max) if integer_in else (0, 0)
    inv_scale = np.float32(1 / in_scale) if integer_in else None

    def quantize(image: np.ndarray) -> np.ndarray:
        q = image * inv_scale  # in place from here: this is a tenth of a 0.25_128 model's time
        np.rint(q, out=q)
        q += in_zero
        np.clip(q, lo, hi, out=q)
        return q.astype(inp["dtype"])

    def run(x):
        logits = []
        for image in np.asarray(x, dtype=np.float32):
            image = quantize(image[None]) if integer_in else image[None]
            interpreter.set_tensor(inp["index"], image)
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"])
            logits.append((y.astype(np.float32) - out_zero) * out_scale if integer_out else y.copy())
        return np.concatenate(logits)

    return run


def runner(fmt: str, path: str | Path, threads: int = 0):
    """The exported file in its own runtime, as a function NCHW float32 array -> logits."""
    return {"onnx": onnx_session, "executorch": executorch_method, "tflite": litert_interpreter}[fmt](path, threads)


def read_metadata(path: str | Path) -> dict:
    """The preprocessing JSON recorded in an exported .onnx, .pte or .tflite file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    if path.suffix == ".tflite":
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model(str(path))
        for entry in model.metadata or []:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            if name == METADATA_KEY:
                return json.loads(bytes(model.buffers[entry.buffer].data).decode())
        raise KeyError(f"{path} has no {METADATA_KEY} metadata")
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    raw = program.load_method("preprocessing_json").execute([])[0]
    return json.loads(bytes(raw.numpy().tolist()).decode())


# ----------------------------------------------------------------------------- int8


def int8_weight_error(w: torch.Tensor) -> torch.Tensor:
    """Rounding error of symmetric per-output-channel int8 weights, [-127, 127]: the scheme of both
    ONNX Runtime's QInt8 per-channel weights and XNNPACKQuantizer's."""
    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp(min=1e-12) / 127
    return (w / scale).round().clamp(-127, 127) * scale - w


@torch.no_grad()
def correct_int8_bias(model: nn.Module, calibration: torch.Tensor, batch: int = 16) -> nn.Module:
    """Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2): int8
    weight rounding shifts each output channel's mean by (W_int8 - W) . E[x]; subtract that shift
    from the bias, E[x] being each input channel's mean over the calibration images. A copy of
    `model` is returned. Measured on the Keras 0.75_224 weights, 1000 sample images: ONNX Runtime
    int8 top-1 80.6% -> 82.0% (fp32 82.4%)."""
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
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
    for m in layers:
        mean_x = sums[m] / len(calibration)
        err = int8_weight_error(m.weight)
        if isinstance(m, nn.Linear):
            shift = err @ mean_x
        elif m.groups == 1:
            shift = (err.sum(dim=(2, 3)) * mean_x[None, :]).sum(dim=1)
        else:  # depthwise (groups == channels): one input channel per output channel
            shift = err.sum(dim=(1, 2, 3)) * mean_x
        m.bias -= shift
    return model


# ----------------------------------------------------------------------------- writers


def _example(ckpt: dict, batch: int = 2) -> torch.Tensor:
    res = int(ckpt["model_args"]["resolution"])
    return torch.zeros(batch, 3, res, res)


def write_onnx(model: nn.Module, path: Path, meta: dict, example: torch.Tensor, calibration: torch.Tensor | None) -> None:
    import onnx

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
    proto = onnx.load(str(path))
    flat = {"input_size": meta["input_size"], "input_layout": meta["input_layout"], "eval_preset": meta["eval_preset"],
            "resize": meta["resize"], "normalization": meta["normalization"], "normalize": meta["normalize"],
            "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]), "num_classes": meta["num_classes"],
            "precision": meta["precision"], METADATA_KEY: json.dumps(meta)}
    del proto.metadata_props[:]
    for key, value in flat.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.doc_string = f"MobileNet v1 exported by {PROG}; preprocessing in metadata_props['{METADATA_KEY}']"
    onnx.save(proto, str(path))


def quantize_onnx(src: Path, dst: Path, calibration: torch.Tensor) -> None:
    """ONNX Runtime static QDQ quantisation: per-channel int8 weights, uint8 activations, MinMax ranges."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calibration[i : i + 1].numpy()} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    pre = src.with_name(src.name + ".pre")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        if pre.exists():
            pre.unlink()


def is_relu6_node(node) -> bool:
    """An FX node computing ReLU6 (hardtanh clamped to [0, 6])."""
    return (node.op == "call_function"
            and node.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
            and [float(a) for a in node.args[1:3]] == [0.0, 6.0])


@contextlib.contextmanager
def relu6_fuses_like_relu():
    """XNNPACKQuantizer annotates conv+ReLU as one unit but quantises a conv followed by ReLU6 (hardtanh)
    at the conv's output, over its whole pre-activation range: -8 points top-1 on the Keras 0.75_224
    weights (82.4% -> 73.8%). XNNPACK fuses conv+hardtanh when lowering anyway, so let the quantizer
    treat ReLU6 as it treats ReLU: one observer after the clamp, range [0, 6]."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils

    original = utils.is_relu_node

    def is_relu_or_relu6(node) -> bool:
        return original(node) or is_relu6_node(node)

    utils.is_relu_node = is_relu_or_relu6
    try:
        yield
    finally:
        utils.is_relu_node = original


@contextlib.contextmanager
def litert_relu6_fuses_like_relu():
    """litert-torch's PT2EQuantizer has the same blind spot as XNNPACKQuantizer (above), worse: it
    makes ReLU6 share the conv's output observer, and the converted model is garbage (measured: 3.5%
    top-1 on the Keras 0.75_224 weights, fp32 82.4%). Its conv+ReLU annotator matches ReLU nodes by
    their target, so ReLU6 nodes show it a ReLU target while it annotates (one observer after the
    clamp, as for ReLU; TF-Lite fuses RELU6 into the conv): 81.9%."""
    from litert_torch.quantize import pt2e_quantizer_utils as utils

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


def write_tflite(model: nn.Module, path: Path, meta: dict, example: torch.Tensor, calibration: torch.Tensor | None) -> None:
    """Google's converter (litert-torch): fp32, or int8 through its PT2E quantizer (per-channel symmetric
    int8 weights, int8 activations, integer input and output). The preprocessing JSON goes into the
    model's metadata table."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its progress tree would drown our output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import litert_torch
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    with torch.no_grad():
        if calibration is None:
            edge = litert_torch.convert(model, (example,))
        else:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            with litert_relu6_fuses_like_relu():
                prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
            for image in calibration:  # the graph is traced at batch 1
                prepared(image[None])
            quantized = convert_pt2e(prepared, fold_quantize=False)
            edge = litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(edge.model_content()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    flat.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(flat.buffers) - 1
    flat.metadata = [*(flat.metadata or []), entry]
    path.write_bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def write_executorch(model: nn.Module, path: Path, meta: dict, example: torch.Tensor,
                     calibration: torch.Tensor | None, max_batch: int) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=max(max_batch, 2))}}  # traced at batch 2
    with torch.no_grad():
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            with relu6_fuses_like_relu():
                prepared = prepare_pt2e(torch.export.export(model, (example,), dynamic_shapes=shapes).module(), quantizer)
            for i in range(0, len(calibration), max_batch):
                prepared(calibration[i : i + max_batch])
            model = convert_pt2e(prepared)
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    constants = {"preprocessing_json": torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8),
                 "input_size": int(meta["input_size"]), "num_classes": int(meta["num_classes"])}
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constants)
    path.write_bytes(lowered.to_executorch().buffer)


# ----------------------------------------------------------------------------- check


def compare(got: np.ndarray, want: np.ndarray, tolerance: float) -> dict:
    """Relative error, least cosine similarity, top-1 agreement and the images whose top-1 differs.
    Near-ties within the tolerance cannot decide a class, so they do not count as disagreements."""
    scale = float(np.abs(want).max()) or 1.0
    rel = float(np.abs(got - want).max()) / scale
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosine = float(np.min((got * want).sum(1) / np.maximum(norms, 1e-30)))
    top = np.sort(want, axis=1)
    margin = (top[:, -1] - top[:, -2]) if want.shape[1] > 1 else np.full(len(want), np.inf)
    differ = [i for i in range(len(want)) if got[i].argmax() != want[i].argmax() and margin[i] > 2 * tolerance * scale]
    agree = float(np.mean(got.argmax(1) == want.argmax(1)))
    return {"max_rel_error": rel, "min_cosine": cosine, "top1_agreement": agree, "top1_differs": differ}


def verify(fmt: str, path: Path, model: nn.Module, inputs: torch.Tensor, quantized: bool, max_batch: int,
           min_cosine: float = INT8_MIN_COSINE) -> dict:
    """Run the file in its runtime; raise UserError if it does not match PyTorch."""
    with torch.no_grad():
        want = model(inputs).numpy()
    try:
        run = runner(fmt, path)
        got = np.concatenate([run(inputs[i : i + max_batch].numpy()) for i in range(0, len(inputs), max_batch)])
    except Exception as e:  # noqa: BLE001 - any runtime failure means a broken export
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"the exported {fmt} model does not run in its runtime ({type(e).__name__}: {first}); "
                        f"nothing written") from None
    if got.shape != want.shape or not np.isfinite(got).all():
        raise UserError(f"the exported {fmt} model returns {got.shape} {'non-finite ' if not np.isfinite(got).all() else ''}"
                        f"logits where PyTorch returns {want.shape}; nothing written")
    c = compare(got, want, FP32_TOLERANCE)
    if quantized and c["min_cosine"] < min_cosine:
        what = f"int8 logits point elsewhere (cosine similarity {c['min_cosine']:.3f} < {min_cosine})"
    elif not quantized and c["max_rel_error"] > FP32_TOLERANCE:
        what = f"logits differ by {c['max_rel_error']:.2g} relative (tolerance {FP32_TOLERANCE:g})"
    elif not quantized and c["top1_differs"]:
        what = f"top-1 differs on image(s) {c['top1_differs']}"
    else:
        return {**c, "num_images": len(inputs)}
    raise UserError(f"the exported {fmt} model does not match PyTorch: {what}; nothing written")


def accuracy_on(folder: str, ckpt: dict, model: nn.Module, run, batch: int) -> dict:
    """PyTorch fp32 top-1 and the exported model's top-1 (percent) on a labelled ImageFolder."""
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader
    from torchvision import datasets

    from .data import eval_transform

    root = Path(folder)
    val = root / ckpt["config"]["data"].get("val_split", "val")
    root = val if val.is_dir() and not image_files_shallow(root) else root
    data = OmegaConf.create(ckpt["config"]["data"])
    try:
        dataset = datasets.ImageFolder(str(root), transform=eval_transform(data, int(ckpt["model_args"]["resolution"])))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"eval={folder} is not a labelled image folder (ROOT/<class>/<image>): {e}") from None
    classes = ckpt.get("classes")
    if classes and list(classes) != list(dataset.classes):
        raise UserError(f"eval={folder} has classes {dataset.classes[:3]}... that differ from the checkpoint's "
                        f"{list(classes)[:3]}...: give the dataset the model was trained on")
    correct_ref = correct = count = 0
    for images, targets in DataLoader(dataset, batch_size=batch, num_workers=0):
        x = normalize(images, data.normalization)
        with torch.no_grad():
            correct_ref += int((model(x).argmax(1) == targets).sum())
        correct += int((torch.from_numpy(run(x.numpy())).argmax(1) == targets).sum())
        count += len(targets)
    return {"eval_dir": str(root), "num_images": count, "pytorch_fp32_top1": 100 * correct_ref / count,
            "exported_top1": 100 * correct / count, "top1_change": 100 * (correct - correct_ref) / count}


def image_files_shallow(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


# ----------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    out: str
    format: str
    precision: str
    verification: dict
    inputs: str
    calibration: str | None = None
    accuracy: dict | None = None
    size_bytes: int = 0


def default_out(ckpt_path: Path, fmt: str, quantize: str | None) -> Path:
    stem = ckpt_path.stem + (f".{quantize}" if quantize else "")
    return ckpt_path.with_name(stem + FORMATS[fmt])


def export(ckpt_path: str, fmt: str, quantize: str | None = None, out: str | None = None, calibration: str | None = None,
           num_calibration: int = 100, eval_dir: str | None = None, num_verify: int = 8, max_batch: int = 8,
           min_cosine: float = INT8_MIN_COSINE) -> ExportResult:
    from .checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is unknown: use one of {', '.join(FORMATS)}")
    if quantize not in (None, *QUANTIZE):
        raise UserError(f"--quantize {quantize} is unknown: use int8 (or leave it out for fp32)")
    for name, value in (("num_calibration", num_calibration), ("num_verify", num_verify), ("max_batch", max_batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name}={value} must be a positive integer")
    require(fmt)
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    out_path = Path(out) if out else default_out(ckpt_path, fmt, quantize)
    if out_path.is_dir():
        raise UserError(f"out={out_path} is a directory: give a file name, e.g. {out_path / ('model' + FORMATS[fmt])}")
    if eval_dir is not None and not Path(eval_dir).is_dir():
        raise UserError(f"eval={eval_dir} is not a directory")
    model = deploy_model(ckpt)
    meta = {**preprocessing(ckpt), "precision": quantize or "fp32", "format": fmt,
            "checkpoint": str(ckpt_path.resolve()), "exported_by": PROG}
    inputs, inputs_from = sample_inputs(ckpt, num_verify)
    calib, calib_from = None, None
    if quantize:
        calib, calib_from = sample_inputs(ckpt, num_calibration, calibration, split="train")
        log.info("calibrating on %s", calib_from)
        if inputs_from.startswith(f"{num_verify} generated") and not calib_from.startswith(f"{num_calibration} generated"):
            # int8 error on generated images says little (measured: cosine 0.79-0.95 where real photos
            # give > 0.97): check on real ones, the calibration images being the only ones at hand.
            inputs = torch.stack(spread(list(calib), num_verify))
            inputs_from = f"{len(inputs)} of the calibration images"
    if fmt == "executorch":
        meta["max_batch"] = max_batch
    else:
        max_batch = 256  # images per runner call; a TF-Lite model takes them one at a time
    if fmt == "tflite":
        meta["batch"] = 1
    example = _example(ckpt, batch=1 if fmt == "tflite" else 2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{os.getpid()}{out_path.suffix}")
    try:
        # int8: biases corrected for the weights' rounding; the check below is against the fp32 model.
        corrected = correct_int8_bias(model, calib) if quantize else model
        if fmt == "onnx":
            write_onnx(corrected, tmp, meta, example, calib)
        elif fmt == "tflite":
            write_tflite(pad_channels_last(copy.deepcopy(corrected)), tmp, meta, example, calib)
        else:
            write_executorch(corrected, tmp, meta, example, calib, max_batch)
        check = verify(fmt, tmp, model, inputs, quantize is not None, max_batch, min_cosine)
        accuracy = accuracy_on(eval_dir, ckpt, model, runner(fmt, tmp), max_batch) if eval_dir else None
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportResult(out=str(out_path), format=fmt, precision=quantize or "fp32", verification=check,
                        inputs=inputs_from, calibration=calib_from, accuracy=accuracy,
                        size_bytes=out_path.stat().st_size)


def _options(items: list[str]) -> dict:
    from .cli import _parse_overrides

    opts = dict(OPTIONS)
    for key, value in _parse_overrides(items).items():
        if key not in OPTIONS:
            raise UserError(f"unknown option '{key}': use {', '.join(f'{k}=' for k in OPTIONS)}")
        opts[key] = str(value) if key in ("out", "calibration", "eval") and value is not None else value
    return opts


def export_cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a mobilenet-train checkpoint to ONNX, ExecuTorch (XNNPACK) or TF-Lite, fp32 or int8, "
                    "BN folded, preprocessing in the file's metadata; the file is checked against PyTorch in its runtime.",
        epilog="options: out=PATH, calibration=DIR num_calibration=N (int8), eval=DIR (labelled ImageFolder: top-1 "
               "of PyTorch fp32 vs the export), num_verify=N, max_batch=N (ExecuTorch). Example: mobilenet-export "
               "checkpoints/best.pt --format onnx --quantize int8 calibration=/data/imagenet/train eval=/data/imagenet/val",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by mobilenet-train or mobilenet-import")
    parser.add_argument("options", nargs="*", metavar="key=value")
    parser.add_argument("--format", required=True, metavar="|".join(FORMATS), help="onnx, executorch or tflite")
    parser.add_argument("--quantize", default=None, metavar="int8", help="post-training static int8 quantisation")
    ns = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # ours, not the exporters' chatter
    try:
        opts = _options(ns.options)
        r = export(ns.checkpoint, ns.format, ns.quantize, out=opts["out"], calibration=opts["calibration"],
                   num_calibration=opts["num_calibration"], eval_dir=opts["eval"], num_verify=opts["num_verify"],
                   max_batch=opts["max_batch"])
    except UserError as e:
        fail(PROG, e)
    v = r.verification
    print(f"exported    {r.format} {r.precision} for {RUNTIMES[r.format]}, BN folded: "
          f"{r.out} ({r.size_bytes / 1e6:.2f} MB)")
    if r.calibration:
        print(f"calibrated  on {r.calibration}")
    print(f"checked     in its runtime on {r.inputs}: max relative logit error {v['max_rel_error']:.2g}, "
          f"min cosine {v['min_cosine']:.4f}, top-1 agreement {100 * v['top1_agreement']:.0f}%")
    if r.accuracy:
        a = r.accuracy
        print(f"accuracy    {a['num_images']} images of {a['eval_dir']}: PyTorch fp32 top-1 {a['pytorch_fp32_top1']:.2f}%, "
              f"exported {a['exported_top1']:.2f}% ({a['top1_change']:+.2f} points)")


if __name__ == "__main__":
    export_cli(sys.argv[1:])

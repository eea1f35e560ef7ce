"""`mobilenet-export`: a checkpoint to ONNX, ExecuTorch or TF-Lite, fp32 or int8, checked in its runtime
(or to timm's Hub layout in safetensors: hub.py).

Every option is checked first (format, numbers, packages, the checkpoint, data.* overrides, the
output path, the eval= and calibration= folders); then the model is BN-folded, written by its
format module to a temporary file beside the output, run in its runtime on a few real images (the
checkpoint's data; generated ones when it has none) and compared with PyTorch (verify.py), and
only then moved into place. int8: the biases are first corrected for the weights' rounding
(quantize.py) and the file is calibrated on real images with the checkpoint's eval preprocessing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..config.schema import ExportOptions
from ..errors import UserError, writing
from ..qat import is_qat
from . import formats
from .formats import FORMATS
from .hub import HUB_FORMAT, export_hub
from .inputs import checked, data_config, folder_images, labelled_folder, preprocessing, sample_inputs, spread
from .prepare import deploy_model, example_input
from .quantize import correct_int8_bias
from .verify import INT8_MIN_COSINE, accuracy_on, verify, verify_qat

log = logging.getLogger("mobilenet_train")

PROG = "mobilenet-export"
QUANTIZE = ("int8",)
RUN_BATCH = 256  # images per runner call where the format has no batch limit of its own


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


def check_request(fmt: str, quantize: str | None, **counts: int) -> None:
    """The format, the precision and the counts, before anything is read."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is unknown: use one of {', '.join(FORMATS)}, {HUB_FORMAT}")
    if quantize not in (None, *QUANTIZE):
        raise UserError(f"--quantize {quantize} is unknown: use int8 (or leave it out for fp32)")
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name}={value} must be a positive integer")
    formats.require(fmt)


def check_out(out_path: Path, fmt: str) -> None:
    if out_path.is_dir():
        raise UserError(f"out={out_path} is a directory: give a file name, e.g. {out_path / ('model' + FORMATS[fmt])}")


def export_with(ckpt_path: str, fmt: str, quantize: str | None, opts: ExportOptions,
                data_items: list[str] = ()) -> ExportResult:
    """export() with the command line's options; `data_items` (data.eval_preset=tf, data=...) apply to the
    checkpoint's config, as mobilenet-eval applies them. --format safetensors: timm's Hub layout (hub.py)."""
    if fmt == HUB_FORMAT:
        r = export_hub(ckpt_path, quantize, opts, data_items)
        return ExportResult(out=r["out"], format=fmt, precision="fp32", verification=r["verification"],
                            inputs=r["inputs"], size_bytes=r["size_bytes"])
    check_request(fmt, quantize, num_calibration=opts.num_calibration, num_verify=opts.num_verify,
                  max_batch=opts.max_batch)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["model_args"].get("task") == "detection":
        from ..detection.export import export_detector

        r = export_detector(Path(ckpt_path), ckpt, fmt, quantize, opts.out, opts.num_verify, opts.num_calibration)
        return ExportResult(out=r["out"], format=fmt, precision=r["precision"], verification=r["verification"],
                            inputs=r["inputs"], calibration=r["calibration"], size_bytes=r["size_bytes"])
    data = data_config(ckpt, list(data_items)) if data_items else None
    return export(ckpt_path, fmt, quantize, out=opts.out, calibration=opts.calibration,
                  num_calibration=opts.num_calibration, eval_dir=opts.eval, num_verify=opts.num_verify,
                  max_batch=opts.max_batch, data=data)


def export(ckpt_path: str, fmt: str, quantize: str | None = None, out: str | None = None,
           calibration: str | None = None, num_calibration: int = 100, eval_dir: str | None = None,
           num_verify: int = 8, max_batch: int = 8, min_cosine: float = INT8_MIN_COSINE,
           data=None) -> ExportResult:
    """Write, check and report one export. `data`: the data config every image goes through (the
    checkpoint's config.data with overrides applied, see inputs.data_config); None: the checkpoint's own."""
    check_request(fmt, quantize, num_calibration=num_calibration, num_verify=num_verify, max_batch=max_batch)
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    data = data_config(ckpt) if data is None else checked(data)
    out_path = Path(out) if out else default_out(ckpt_path, fmt, quantize)
    check_out(out_path, fmt)
    labelled = labelled_folder(eval_dir, ckpt, data) if eval_dir is not None else None
    if is_qat(ckpt):
        quantize = check_qat_request(ckpt, fmt, quantize, calibration)
    elif quantize and calibration is not None:
        folder_images(calibration, "calibration")
    # Every option is checked: from here on, the work.
    if is_qat(ckpt):
        return export_qat(ckpt_path, ckpt, fmt, out_path, data, labelled, num_verify, max_batch)
    model = deploy_model(ckpt)
    inputs, inputs_from = sample_inputs(ckpt, num_verify, data=data)
    calib, calib_from = None, None
    if quantize:
        calib, calib_from = sample_inputs(ckpt, num_calibration, calibration, split="train", data=data)
        log.info("calibrating on %s", calib_from)
        if (inputs_from.startswith(f"{num_verify} generated")
                and not calib_from.startswith(f"{num_calibration} generated")):
            inputs, inputs_from = _calibration_subset(calib, num_verify)
    module = formats.load(fmt)
    meta = {**preprocessing(ckpt, data), "precision": quantize or "fp32", "format": fmt,
            "checkpoint": str(ckpt_path.resolve()), "exported_by": PROG}
    if fmt == "executorch":
        meta["max_batch"] = max_batch
    else:
        max_batch = RUN_BATCH  # images per runner call; a TF-Lite model takes them one at a time
    if module.EXAMPLE_BATCH == 1:
        meta["batch"] = 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{os.getpid()}{out_path.suffix}")
    try:
        # int8: biases corrected for the weights' rounding; the check below is against the fp32 model.
        corrected = correct_int8_bias(model, calib) if quantize else model
        with writing(out_path):  # a full or read-only disk: one line naming the file
            module.write(corrected, tmp, meta, example_input(ckpt, batch=module.EXAMPLE_BATCH), calib, max_batch)
        check = verify(fmt, tmp, model, inputs, quantize is not None, max_batch, min_cosine)
        accuracy = accuracy_on(labelled, data, model, formats.runner(fmt, tmp), max_batch) if labelled else None
        with writing(out_path):
            os.replace(tmp, out_path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return ExportResult(out=str(out_path), format=fmt, precision=quantize or "fp32", verification=check,
                        inputs=inputs_from, calibration=calib_from, accuracy=accuracy,
                        size_bytes=out_path.stat().st_size)


# The quantizer each format's int8 uses (qat.py trains with the one of qat.target).
QUANTIZER = {"tflite": "litert-torch's PT2EQuantizer", "executorch": "XNNPACKQuantizer", "onnx": "XNNPACKQuantizer"}


def check_qat_request(ckpt: dict, fmt: str, quantize: str | None, calibration: str | None) -> str:
    """A QAT checkpoint exports int8 with its trained ranges, for the quantizer it was trained with."""
    target = ckpt["config"]["qat"]["target"]
    if calibration is not None:
        raise UserError("a QAT checkpoint carries its trained ranges and is not calibrated again: drop calibration=")
    if QUANTIZER[fmt] != QUANTIZER[target]:
        raise UserError(f"this QAT checkpoint was trained for qat.target={target} ({QUANTIZER[target]}): export it "
                        f"with --format {target}, or train with qat.target={fmt}")
    return quantize or "int8"


def export_qat(ckpt_path: Path, ckpt: dict, fmt: str, out_path: Path, data, labelled, num_verify: int,
               max_batch: int) -> ExportResult:
    """The int8 file of a QAT checkpoint: its fake-quantized graph converted (convert_pt2e, the trained
    ranges), written by the format's converter, checked against the fake-quantized model."""
    from ..qat import convert, model_from_checkpoint

    fake_quantized = model_from_checkpoint(ckpt)
    inputs, inputs_from = sample_inputs(ckpt, num_verify, data=data)
    module = formats.load(fmt)
    meta = {**preprocessing(ckpt, data), "precision": "int8", "quantization": "qat", "format": fmt,
            "checkpoint": str(ckpt_path.resolve()), "exported_by": PROG}
    if fmt == "executorch":
        meta["max_batch"] = max_batch
    else:
        max_batch = RUN_BATCH
    if module.EXAMPLE_BATCH == 1:
        meta["batch"] = 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{os.getpid()}{out_path.suffix}")
    try:
        converted = convert(fake_quantized, fold_quantize=fmt != "tflite")
        with writing(out_path):
            module.write_converted(converted, tmp, meta, example_input(ckpt, batch=module.EXAMPLE_BATCH), max_batch)
        check = verify_qat(fmt, tmp, fake_quantized, inputs, max_batch)
        accuracy = accuracy_on(labelled, data, fake_quantized, formats.runner(fmt, tmp), max_batch) \
            if labelled else None
        with writing(out_path):
            os.replace(tmp, out_path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return ExportResult(out=str(out_path), format=fmt, precision="int8", verification=check, inputs=inputs_from,
                        calibration="no images (the QAT checkpoint's trained ranges)", accuracy=accuracy,
                        size_bytes=out_path.stat().st_size)


def _calibration_subset(calib: torch.Tensor, n: int) -> tuple[torch.Tensor, str]:
    """int8 error on generated images says little (cosine well below that of real photos): where the
    check would run on generated images, it runs on real ones, the calibration images being the only
    ones at hand."""
    inputs = torch.stack(spread(list(calib), n))
    return inputs, f"{len(inputs)} of the calibration images"

"""`mobilenet-export CKPT --format safetensors`: the checkpoint in timm's Hugging Face Hub layout.

OUT/model.safetensors holds the float weights under timm's names (BN kept, not folded) and OUT/config.json
timm's Hub config: architecture, num_classes, model_args, label_names and a pretrained_cfg holding the
checkpoint's eval preprocessing, plus a `mobilenet_train` section (the exact model args) that timm ignores
(weights/timm_model.py writes both). The folder is written beside OUT and read back before it is moved into
place: by this toolkit's own reader (every width), and by timm.create_model('local-dir:...') where timm has
the architecture (mobilenetv1_100 and mobilenetv1_125 widths); each must give the checkpoint's logits.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..errors import UserError
from ..qat import is_qat
from ..weights.timm_model import CONFIG_FILE, WEIGHT_FILES, timm_architecture, write_hub
from .inputs import data_config, sample_inputs

log = logging.getLogger("mobilenet_train")

HUB_FORMAT = "safetensors"
# Same weights, same float32 ops in another order: logits agree to rounding.
MAX_REL_ERROR = 1e-4


def default_hub_out(ckpt_path: Path) -> Path:
    return ckpt_path.with_name(f"{ckpt_path.stem}_timm")


def check_hub_request(ckpt: dict, quantize: str | None, opts) -> None:
    if quantize:
        raise UserError(f"--format {HUB_FORMAT} writes the float weights for timm and the Hub: drop --quantize")
    for name in ("calibration", "eval"):
        if getattr(opts, name) is not None:
            raise UserError(f"{name}= does not apply to --format {HUB_FORMAT}: drop it")
    if ckpt["model_args"].get("task") == "detection":
        raise UserError(f"--format {HUB_FORMAT} writes classifiers in timm's layout; this is a detector: "
                        f"export it with --format onnx|executorch|tflite")
    if is_qat(ckpt):
        raise UserError(f"this is a QAT checkpoint (a fake-quantized graph); --format {HUB_FORMAT} takes a float "
                        f"checkpoint (export a QAT one with --format tflite|executorch|onnx)")
    if ckpt["model_args"].get("variant", "separable") != "separable":
        raise UserError(f"model.variant={ckpt['model_args']['variant']} has no timm layout (timm's MobileNet v1 is "
                        f"the separable network of Table 1)")


def check_hub_out(out: Path) -> None:
    """OUT is new, or an earlier export (only model.safetensors and config.json in it) that is replaced."""
    if out.is_file():
        raise UserError(f"out={out} is a file; --format {HUB_FORMAT} writes a folder (model.safetensors, config.json)")
    if out.is_dir() and any(p.name not in (*WEIGHT_FILES, CONFIG_FILE) for p in out.iterdir()):
        raise UserError(f"out={out} is a folder holding other files: give a new or empty folder")


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def check_folder(folder: Path, reference: torch.Tensor, inputs: torch.Tensor, arch: str | None) -> dict:
    """The written folder read back by this toolkit and by timm: their logits against `reference`."""
    import timm

    from ..importer import build_import

    _, ours, _, _, _, _ = build_import([folder], {}, keep_background=False)
    check = {"toolkit_max_rel_error": _rel_error(_logits(ours, inputs), reference), "timm_architecture": arch}
    if arch is not None:
        theirs = timm.create_model(f"local-dir:{folder}", pretrained=True)
        check["timm_max_rel_error"] = _rel_error(_logits(theirs, inputs), reference)
    bad = {k: v for k, v in check.items() if k.endswith("error") and not v <= MAX_REL_ERROR}
    if bad:
        raise UserError(f"the written folder does not reproduce the checkpoint's logits ({bad}); nothing written: "
                        f"please report this")
    return check


def export_hub(ckpt_path: str, quantize: str | None, opts, data_items: list[str] = ()) -> dict:
    """Write, read back and move into place OUT/model.safetensors + OUT/config.json; returns the summary."""
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path)
    check_hub_request(ckpt, quantize, opts)
    out = Path(opts.out) if opts.out else default_hub_out(path)
    check_hub_out(out)
    data = data_config(ckpt, list(data_items))
    model, args = model_from_checkpoint(ckpt)
    inputs, inputs_from = sample_inputs(ckpt, opts.num_verify, data=data)
    reference = _logits(model, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    tmp.mkdir()
    try:
        config = write_hub(tmp, model, data, ckpt.get("classes"))
        check = check_folder(tmp, reference, inputs, timm_architecture(args))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"out": str(out), "architecture": config["architecture"], "model_args": config["model_args"],
            "verification": check, "inputs": inputs_from, "size_bytes": size}

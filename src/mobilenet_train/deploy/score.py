"""Score an exported file in its own runtime on labelled data: the library side of
`mobilenet-eval FILE.onnx|FILE.pte|FILE.tflite`.

The images go through mobilenet-eval's pipeline (the same loader, eval transform and
normalisation as for a checkpoint) and the runtime takes the place of the PyTorch model, so the
numbers compare with a checkpoint's eval.json one to one. The preprocessing comes from the
file's own metadata (mobilenet-export records it); a TF-Lite file without it (Google's releases)
is read as mobilenet-import reads it: TF-slim's preprocessing, its input quantization from the
file, the background logit dropped; Google's TF-Lite detector is scored by score_detect.py. The
data side starts from the exporting checkpoint's data config when that file is still there (its
data.root), else from the defaults, and takes the user's overrides as mobilenet-eval does.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from ..checkpoint import atomic_write_json
from ..complexity import measure_complexity
from ..config import apply_overrides, compose, resolved, typed_config
from ..config.compose import set_value
from ..data import DevicePreprocess
from ..engine import progress_enabled
from ..engine.scoring import embedding_data, evaluator
from ..engine.trainer import task_data
from ..errors import UserError
from ..model import MobileNetV1, ModelArgs
from . import formats
from .formats import FORMATS, RUNTIMES

EXPORTED = {suffix: fmt for fmt, suffix in FORMATS.items()}
# Flatbuffer file identifiers (bytes 4-8); checked first, since the runtimes' loaders print to stderr on garbage.
IDENTIFIERS = {"tflite": b"TFL3", "executorch": b"ET"}
# The preprocessing keys of the metadata and the config keys they set.
META_TO_DATA = {"eval_preset": "eval_preset", "crop_fraction": "eval_crop_fraction",
                "interpolation": "interpolation", "normalization": "normalization", "num_classes": "num_classes"}


def is_exported(path: str | Path) -> bool:
    return Path(path).suffix in EXPORTED


class RuntimeModel(nn.Module):
    """The file's runtime as a module `evaluate` calls: float NCHW batch -> float logits."""

    def __init__(self, run, drop_background: bool = False, nhwc: bool = False, probabilities: bool = False):
        super().__init__()
        self.run, self.drop_background, self.nhwc, self.probabilities = run, drop_background, nhwc, probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().permute(0, 2, 3, 1) if self.nhwc else x.float()  # TF's own files take NHWC
        y = torch.from_numpy(self.run(x.contiguous().numpy()))
        if self.probabilities:  # a softmax output: its log is the logits up to a constant (for the loss)
            y = y.clamp(min=1e-12).log()
        return y[:, 1:] if self.drop_background else y  # TF-slim's background logit is no class


def _fmt(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    fmt = EXPORTED[path.suffix]
    missing = formats.missing_packages(fmt)
    if missing:
        raise UserError(f"scoring a {path.suffix} file needs the Python package(s) {', '.join(missing)} "
                        f"({RUNTIMES[fmt]}), which are not installed: pip install 'mobilenet-train[deploy]'")
    with open(path, "rb") as f:
        head = f.read(8)
    if fmt in IDENTIFIERS and not head[4:].startswith(IDENTIFIERS[fmt]):
        raise UserError(f"{path} is not a readable {fmt} file (no {IDENTIFIERS[fmt].decode()} file identifier)")
    return fmt


def _is_detector(path: Path) -> bool:
    """Google's TF-Lite SSD (a TFLite_Detection_PostProcess op); a file mobilenet-export wrote is not one."""
    from ..importer import is_tflite_detector

    return is_tflite_detector(path)


def describe(path: Path, fmt: str) -> dict:
    """{meta, model (for the complexity), drop_background, quantization} of the file."""
    try:
        meta = formats.read_metadata(path)
    except KeyError:
        if fmt != "tflite":
            raise UserError(f"{path} has no mobilenet-train preprocessing metadata: export it with "
                            f"mobilenet-export") from None
        return _foreign_tflite(path)
    except Exception as e:  # noqa: BLE001 - every runtime has its own error for a file it cannot read
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path} is not a readable {fmt} file ({type(e).__name__}: {first})") from None
    model = MobileNetV1(ModelArgs(**meta["model_args"]))
    precision = meta.get("precision", "fp32")
    quantization = precision if precision == "fp32" else f"{precision}-{meta.get('quantization', 'ptq')}"
    return {"meta": meta, "model": model, "drop_background": False, "nhwc": False, "probabilities": False,
            "quantization": quantization}


def _foreign_tflite(path: Path) -> dict:
    """A TF-Lite file mobilenet-export did not write (Google's): read as mobilenet-import reads it."""
    from ..importer import imagenet_classes, read_source
    from ..weights import to_model

    src = read_source([path])
    model, args, info = to_model(src, src.resolution)
    meta = {"model_args": args.to_dict(), "eval_preset": src.eval_preset, "normalization": "inception",
            "num_classes": args.num_classes, "classes": imagenet_classes(args.num_classes)}
    weights = src.details["weight_dtype"]
    return {"meta": meta, "model": model, "drop_background": bool(info["dropped_background"]), "nhwc": True,
            "probabilities": "SOFTMAX" in src.details["ops"],
            "quantization": "fp32" if weights == "float32" else f"{weights}-google"}


def file_config(meta: dict, rest: list[str]) -> DictConfig:
    """The eval config: the exporting checkpoint's (when still there) or the defaults, the file's model and
    preprocessing, then the user's overrides."""
    for item in rest:
        if item.lstrip("+").startswith("model."):
            raise UserError(f"'{item}': an exported file's model is fixed by the file; drop the override")
    source = Path(str(meta.get("checkpoint") or ""))
    base = None
    if meta.get("checkpoint") and source.is_file():
        from ..checkpoint import load_checkpoint

        try:
            base = load_checkpoint(source)["config"]
        except UserError:
            base = None
    cfg = typed_config(base if base is not None else resolved(compose([])))
    for key, value in meta["model_args"].items():
        if key != "num_classes":
            set_value(cfg, f"model.{key}", value)
    for key, name in META_TO_DATA.items():
        if key in meta:
            set_value(cfg, f"data.{name}", meta[key])
    return apply_overrides(cfg, rest)


def _out_path(path: Path, out: str | None) -> Path:
    """Where eval.json goes, checked writable before anything runs (Google's files may sit read-only)."""
    target = Path(out) if out else path.with_name(path.name + ".eval.json")
    if target.is_dir():
        raise UserError(f"out={target} is a directory: give a file name, e.g. {target / 'eval.json'}")
    folder = next((p for p in [target.parent, *target.parent.parents] if p.exists()), Path("."))
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {target} ({folder} is not writable): give out=PATH")
    return target


def score_file(file: str, opts, rest: list[str]) -> dict:
    """Evaluate an exported file; write eval.json (atomically); return its content plus `out`."""
    path = Path(file)
    fmt = _fmt(path)
    if str(opts.device) not in ("auto", "cpu") or opts.amp != "none":
        raise UserError(f"an exported file runs in {RUNTIMES[fmt]} on the CPU: drop device= and amp=")
    if fmt == "tflite" and _is_detector(path):
        from ..importer import read_source
        from .score_detect import score_tflite_detector

        return score_tflite_detector(path, read_source([path]), opts, rest, _out_path(path, opts.out))
    info = describe(path, fmt)
    meta = info["meta"]
    cfg = file_config(meta, rest)
    out = _out_path(path, opts.out)
    resolution = int(meta["model_args"]["resolution"])
    # An embedding network's file outputs the embedding; a multi-label one the attribute logits.
    task = "embedding" if meta["model_args"].get("embedding_dim") else str(cfg.task)
    data = embedding_data(cfg, resolution) if task == "embedding" else task_data(cfg)(cfg, resolution, train=False)
    classes = meta.get("classes")
    if task != "embedding" and classes and list(classes) != data.classes:
        raise UserError(f"the evaluation data's classes differ from the file's ({len(data.classes)} vs "
                        f"{len(classes)} classes, e.g. '{data.classes[0]}' vs '{classes[0]}'): point data.root "
                        f"at the dataset the model was trained on")
    model = RuntimeModel(formats.runner(fmt, path, int(opts.threads)), info["drop_background"], info["nhwc"],
                         info["probabilities"])
    prep = DevicePreprocess(cfg.data.normalization, torch.device("cpu"), channels_last=False)
    metrics = evaluator(task)(model, data.val_loader, prep, desc="eval", progress=progress_enabled(opts.progress))
    if task == "multilabel":
        metrics["ap_per_attribute"] = dict(zip(data.classes, metrics["ap_per_attribute"], strict=True))
    args = meta["model_args"]
    result = {
        **metrics, **measure_complexity(info["model"], resolution), **({"task": task} if task != "classification"
                                                                       else {}),
        "file": str(path.resolve()), "format": fmt, "runtime": RUNTIMES[fmt], "quantization": info["quantization"],
        "checkpoint": meta.get("checkpoint"), "alpha": args["alpha"], "resolution": resolution,
        "variant": args.get("variant", "separable"), "use_ema": False, "dataset": cfg.data.name,
        "eval_preset": cfg.data.eval_preset, "data_root": str(cfg.data.root) if cfg.data.root else None,
        "split": cfg.data.val_split, "device": "cpu", "threads": int(opts.threads), "model_args": dict(args),
    }
    atomic_write_json(out, result)
    return {**result, "out": str(out)}

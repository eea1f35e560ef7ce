"""Score a checkpoint on labelled data: the library side of `mobilenet-eval`.

The model is rebuilt from the checkpoint alone; the data side is the checkpoint's own config
with the user's overrides, read with mobilenet-train's meaning (`data=imagenet_shards` selects
that option, `data.root=...` sets a key) and checked against the schema before anything loads.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from omegaconf import DictConfig

from .checkpoint import atomic_write_json, load_checkpoint, model_from_checkpoint
from .complexity import measure_complexity
from .config import apply_overrides, parse_options, parse_overrides, typed_config
from .config.schema import EvalOptions
from .data import DevicePreprocess
from .data.coco import build_detection_data
from .detection.evaluate import evaluate_detection
from .detection.model import detector_from_args
from .detection.train import detector_complexity
from .engine import autocast_dtype, progress_enabled, resolve_device
from .engine.scoring import PooledFeatures, embedding_data, evaluator
from .engine.trainer import task_data
from .errors import UserError
from .model import MobileNetV1, ModelArgs
from .qat import is_qat
from .qat import model_from_checkpoint as qat_model

# Model settings an evaluation may change without contradicting the checkpoint.
FREE_MODEL_KEYS = {"resolution"}


def eval_items(items: list[str]) -> tuple[DictConfig, list[str]]:
    """(mobilenet-eval's own options, the config overrides), data.batch_size read as the eval batch."""
    opts, rest = parse_options(EvalOptions, list(items), others=True)
    rest = [f"data.eval_batch_size={line.partition('=')[2]}" if line.startswith("data.batch_size=") else line
            for line in rest]
    return opts, rest


def eval_config(ckpt: dict, items: list[str]) -> tuple[DictConfig, DictConfig]:
    """(the checkpoint's config with the overrides applied, mobilenet-eval's own options)."""
    opts, rest = eval_items(items)
    stored = ckpt["model_args"]
    for o in parse_overrides(rest):
        name = o.key_or_group.removeprefix("model.")
        if o.key_or_group.startswith("model.") and name not in FREE_MODEL_KEYS and name in stored \
                and stored[name] != o.value():
            raise UserError(f"the checkpoint's model has {o.key_or_group}={stored[name]} but the override says "
                            f"{o.input_line}: drop the override (the model is rebuilt from the checkpoint)")
    cfg = apply_overrides(typed_config(ckpt["config"]), rest)
    cfg.trainer.device = opts.device
    return cfg, opts


def evaluate_file(path: str, items: list[str]) -> dict:
    """An exported .onnx, .pte or .tflite file in its own runtime (deploy/score.py)."""
    from .deploy.score import score_file

    opts, rest = eval_items(items)
    if opts.use_ema:
        raise UserError("use_ema=true applies to checkpoints; an exported file holds one set of weights")
    return score_file(path, opts, rest)


def _model(ckpt: dict, use_ema: bool):
    """The checkpoint's model: float, or fake-quantized as a QAT run trained it (qat.py)."""
    if not is_qat(ckpt):
        return model_from_checkpoint(ckpt, use_ema=use_ema)
    if use_ema:
        raise UserError("use_ema=true is not available for QAT checkpoints: evaluate the trained weights")
    return qat_model(ckpt), ModelArgs(**ckpt["model_args"])


@contextlib.contextmanager
def full_fp32(device: torch.device, amp):
    """An fp32 evaluation on CUDA in true fp32 (no TF32 convolutions or matmuls), so that mobilenet-eval
    gives the CPU's top-1 on any device; the training loop keeps PyTorch's defaults."""
    if device.type != "cuda" or amp is not None:
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def evaluate_checkpoint(ckpt_path: str, items: list[str]) -> dict:
    """Evaluate, write eval.json (atomically) and return its content plus `out`."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["model_args"].get("task") == "detection":
        return evaluate_detector_checkpoint(ckpt, ckpt_path, items)
    cfg, opts = eval_config(ckpt, items)
    device = resolve_device(str(opts.device))
    amp = autocast_dtype(opts.amp, device)
    model, args = _model(ckpt, opts.use_ema)
    task = _eval_task(cfg, args, opts)
    if task == "embedding" and not args.embedding_dim:
        model = PooledFeatures(model)  # embedding=true: a classifier's pooled features
    resolution = int(cfg.model.resolution)
    complexity = measure_complexity(MobileNetV1(args), resolution)
    data = embedding_data(cfg, resolution) if task == "embedding" else task_data(cfg)(
        cfg, resolution, train=False, pin_memory=device.type == "cuda")
    if task != "embedding" and ckpt.get("classes") and list(ckpt["classes"]) != data.classes:
        raise UserError(f"the evaluation data's classes differ from the checkpoint's ({len(data.classes)} vs "
                        f"{len(ckpt['classes'])} classes, e.g. '{data.classes[0]}' vs '{ckpt['classes'][0]}'): "
                        f"point data.root at the dataset the model was trained on")
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    prep = DevicePreprocess(cfg.data.normalization, device, cfg.trainer.channels_last)
    with full_fp32(device, amp):
        metrics = evaluator(task)(model, data.val_loader, prep, amp, desc="eval",
                                  progress=progress_enabled(opts.progress))
    if task == "multilabel":
        metrics["ap_per_attribute"] = dict(zip(data.classes, metrics["ap_per_attribute"], strict=True))
    result = {
        **metrics, **complexity, **({"task": task} if task != "classification" else {}),
        **({"embedding_of": "pooled features (embedding=true)"} if opts.embedding else {}),
        "checkpoint": str(Path(ckpt_path).resolve()), "alpha": args.alpha, "resolution": resolution,
        "variant": args.variant, "use_ema": opts.use_ema, "dataset": cfg.data.name,
        "eval_preset": cfg.data.eval_preset, "data_root": str(cfg.data.root) if cfg.data.root else None,
        "split": cfg.data.val_split, "epoch": ckpt.get("epoch"), "step": ckpt.get("step"), "device": str(device),
        "amp": opts.amp, "model_args": {**args.to_dict(), "resolution": resolution},
        "quantization": "int8-qat-fake" if is_qat(ckpt) else "fp32",
    }
    out = Path(opts.out) if opts.out else Path(ckpt_path).with_name("eval.json")
    atomic_write_json(out, result)
    return {**result, "out": str(out)}


def _eval_task(cfg: DictConfig, args: ModelArgs, opts: DictConfig) -> str:
    """What the checkpoint is scored as: its task, or an embedding with embedding=true."""
    task = str(cfg.task)
    if opts.embedding:
        if task not in ("classification", "embedding"):
            raise UserError(f"embedding=true scores a classifier's pooled features; this is a task={task} "
                            f"checkpoint: drop embedding=true")
        return "embedding"
    return "embedding" if args.embedding_dim else task


def evaluate_detector_checkpoint(ckpt: dict, ckpt_path: str, items: list[str]) -> dict:
    """mobilenet-eval of a task=detection checkpoint: COCOeval on its val split, written to eval.json."""
    cfg, opts = eval_config(ckpt, items)
    device = resolve_device(str(opts.device))
    amp = autocast_dtype(opts.amp, device)
    stored = dict(ckpt["model_args"])
    if opts.use_ema:
        if not ckpt.get("ema"):
            raise UserError("use_ema=true but this checkpoint has no EMA weights (train with trainer.ema.enabled=true)")
        ckpt = {**ckpt, "model": {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}}
    stored["resolution"] = int(cfg.model.resolution)
    model, args = detector_from_args(stored)
    model.load_state_dict(ckpt["model"])
    complexity = detector_complexity(model, args.resolution)
    by_id = (list(ckpt["classes"]), list(ckpt["category_ids"])) if ckpt.get("category_ids") else None
    data = build_detection_data(cfg, args.resolution, train=False, pin_memory=device.type == "cuda",
                                model_categories=by_id)
    if not by_id and ckpt.get("classes") and list(ckpt["classes"]) != data.classes:
        raise UserError(f"the evaluation data's categories differ from the checkpoint's ({len(data.classes)} vs "
                        f"{len(ckpt['classes'])}): point data.root at the dataset the model was trained on")
    model.to(device)
    prep = DevicePreprocess(cfg.data.normalization, device, cfg.trainer.channels_last)
    metrics = evaluate_detection(model, data.val_loader, prep, amp, desc="eval",
                                 progress=progress_enabled(opts.progress), category_ids=by_id[1] if by_id else None)
    result = {
        **metrics, **complexity, "task": "detection",
        "checkpoint": str(Path(ckpt_path).resolve()), "alpha": args.alpha, "resolution": args.resolution,
        "variant": args.variant, "head": args.head, "use_ema": opts.use_ema, "dataset": cfg.data.name,
        "data_root": str(cfg.data.root) if cfg.data.root else None, "split": cfg.data.val_split,
        "epoch": ckpt.get("epoch"), "step": ckpt.get("step"), "device": str(device), "amp": opts.amp,
        "model_args": args.to_dict(), "max_detections_per_image": args.detections_per_img,
        "category_mapping": "by COCO id (the checkpoint's category_ids)" if by_id else "dataset order",
    }
    out = Path(opts.out) if opts.out else Path(ckpt_path).with_name("eval.json")
    atomic_write_json(out, result)
    return {**result, "out": str(out)}

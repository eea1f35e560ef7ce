"""Console scripts: `mobilenet-train` (Hydra) and `mobilenet-eval`.

Bad input of any kind (an unknown override, a missing dataset, a foreign or truncated
checkpoint) ends in one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import distributed
from .errors import UserError, fail
from .preemption import EXIT_PREEMPTED, Preempted, requeue_through_submitit

CONFIG_MODULE = "mobilenet_train.configs"
log = logging.getLogger("mobilenet_train")


def _run_stamp() -> str:
    """The last part of the default run dir: `slurm-<job id>` in a Slurm batch job, so that every
    rank, node and requeued restart of the job names the same dir (and resumes from it), else a
    timestamp. Interactive allocations (salloc) keep timestamps: each command there is a new run."""
    from datetime import datetime

    job = distributed.slurm_job_id()
    if job and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive", "sh"):
        return f"slurm-{job}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _rank_zero_only(value):
    """`value` on the main process, None on the others (Hydra then skips writing .hydra/)."""
    return value if distributed.detect_launch().rank == 0 else None


# Used by configs/train.yaml (hydra.run.dir, hydra.output_subdir); cached like Hydra's `now`.
OmegaConf.register_new_resolver("mt_run_stamp", _run_stamp, use_cache=True, replace=True)
OmegaConf.register_new_resolver("mt_rank_zero_only", _rank_zero_only, replace=True)

# Hydra flags that are not overrides: with any of them we leave the command line to Hydra.
_HYDRA_FLAGS = {"-m", "--multirun"}


# ----------------------------------------------------------------------------- mobilenet-train


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose the real config with overrides (as Hydra would); errors become UserError."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception as e:  # noqa: BLE001 - hydra raises many types; all mean "bad override"
        raise UserError(_hydra_message(e)) from None
    finally:
        GlobalHydra.instance().clear()


def _hydra_message(e: BaseException) -> str:
    parts = []
    while e is not None and len(parts) < 3:
        text = str(e).strip()
        if text and text not in parts:
            parts.append(text.split("\n    full_key")[0])
        e = e.__cause__
    return " ".join(parts) or "invalid configuration"


def _single_run_overrides(args: list[str]) -> list[str] | None:
    """The overrides of the first run of a sweep, or None if the command line is not just overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if a not in _HYDRA_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return None  # --help, --cfg, -cn ...: Hydra's business
    parser = OverridesParser.create()
    single = []
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot parse override '{text}': {_hydra_message(e)}") from None
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()), None)
            single.append(f"{o.get_key_element()}={first}")
        else:
            single.append(o.input_line)
    return single


def _swept_values(cfg: DictConfig, args: list[str]) -> dict[str, list]:
    """Every value each key takes in a `-m` sweep: the config's hydra.sweeper.params (e.g. from
    +experiment=paper_grid), a key swept on the command line replacing its list, as BasicSweeper does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = cfg.hydra.sweeper.get("params") or {}
    texts = [f"{k}={v}" for k, v in params.items()] + [a for a in args if a not in _HYDRA_FLAGS]
    swept = {}
    for o in OverridesParser.create().parse_overrides(texts):
        key = o.get_key_element()
        if o.is_sweep_override():
            swept[key] = list(o.sweep_iterator())
        else:
            swept.pop(key, None)
    return swept


def preflight(args: list[str]) -> None:
    """Compose and validate the config before Hydra creates a run dir for it; in a sweep,
    every swept model value too, so a bad one stops the sweep before its first run."""
    from dataclasses import replace

    from .model import ModelArgs

    overrides = _single_run_overrides(args)
    if overrides is None:
        return
    cfg = compose_config(overrides)
    try:
        first = ModelArgs.from_config(cfg.model)
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        # Every interpolation of the job's config resolves and no mandatory value (???) is missing.
        OmegaConf.to_container(job, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key} is required and has no value: pass {e.full_key}=...") from None
    except OmegaConfBaseException as e:
        raise UserError(_hydra_message(e)) from None
    multirun = any(a in _HYDRA_FLAGS for a in args)
    if multirun:
        for key, values in _swept_values(cfg, args).items():
            name = key.removeprefix("model.")
            if key.startswith("model.") and name in ModelArgs.__dataclass_fields__:
                for value in values:
                    replace(first, **{name: value}).validate()
    elif cfg.hydra.sweeper.get("params"):
        keys = ", ".join(cfg.hydra.sweeper.params)
        print(f"mobilenet-train: note: the config sweeps {keys} only with -m (mobilenet-train -m ...); "
              f"this is one run with model.alpha={first.alpha}, model.resolution={first.resolution}",
              file=sys.stderr, flush=True)


def _leave_logs_to_rank_zero() -> None:
    """Ranks other than 0 log only warnings and errors, to the console: one train.log per run,
    written by rank 0, and no line printed once per process."""
    log.setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def _remove_if_empty_run(run_dir: Path) -> None:
    """Bad input found before training began: leave no half-made run dir behind."""
    if not run_dir.is_dir():
        return
    leftovers = {p.name for p in run_dir.iterdir()} - {".hydra", "train.log"}
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def _train_task(cfg: DictConfig) -> float | None:
    from .engine import fit

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    launch = distributed.detect_launch()
    if launch.rank != 0:
        _leave_logs_to_rank_zero()
    try:
        metrics = fit(cfg, run_dir)
        return metrics.get("val_top1")  # the value a Hydra sweeper optimises
    except Preempted as e:
        log.warning("%s", e)
        distributed.cleanup()
        if launch.rank == 0:
            requeue_through_submitit(e.signum, e.previous_handlers)  # exits when submitit requeues
        if launch.launcher == "submitit":
            return None  # submitit's rank 0 requeues the whole job; the other tasks just end
        sys.exit(EXIT_PREEMPTED)
    except UserError as e:
        _remove_if_empty_run(run_dir)
        fail("mobilenet-train", e)
    except KeyboardInterrupt:
        log.warning("interrupted: resume later from %s", run_dir / "checkpoints" / "last.pt")
        sys.exit(130)
    finally:
        distributed.cleanup()


def train_cli() -> None:
    try:
        preflight(sys.argv[1:])
    except UserError as e:
        fail("mobilenet-train", e)
    _train_task()


# ----------------------------------------------------------------------------- mobilenet-eval

# Keys of mobilenet-eval itself (everything else is a config key of the checkpoint's run).
EVAL_KEYS = {"use_ema": False, "out": None, "device": "auto", "amp": "none", "progress": "auto"}
# Model settings an evaluation may change without contradicting the checkpoint.
FREE_MODEL_KEYS = {"resolution"}


def _parse_overrides(items: list[str]) -> dict:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"'{item}' is not a key=value override (e.g. data.root=/datasets/imagenet)")
        try:
            parsed[key] = OmegaConf.from_dotlist([f"value={value}"]).value if value != "" else None
        except OmegaConfBaseException:
            raise UserError(f"cannot parse the value of '{item}'") from None
    return parsed


def eval_config(ckpt: dict, overrides: dict) -> tuple[DictConfig, dict]:
    """The checkpoint's own config with the user's overrides applied; checks they fit."""
    opts = dict(EVAL_KEYS)
    for key in list(overrides):
        if key in EVAL_KEYS:
            opts[key] = overrides.pop(key)
    if "data.batch_size" in overrides:  # in eval, the batch asked for is the eval batch
        overrides["data.eval_batch_size"] = overrides.pop("data.batch_size")
    stored = ckpt["model_args"]
    for key, value in overrides.items():
        name = key.removeprefix("model.")
        if key.startswith("model.") and name not in FREE_MODEL_KEYS and name in stored and stored[name] != value:
            raise UserError(f"the checkpoint's model has {key}={stored[name]} but the override says {key}={value}: "
                            f"drop the override (the model is rebuilt from the checkpoint)")
    cfg = OmegaConf.create(ckpt["config"])
    cfg.data.setdefault("eval_preset", "default")  # checkpoints from before the presets existed
    OmegaConf.set_struct(cfg, True)
    for key, value in overrides.items():
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException:
            raise UserError(f"unknown override '{key}': it is not a key of the checkpoint's config "
                            f"(keys of mobilenet-eval itself: {', '.join(EVAL_KEYS)})") from None
    cfg.trainer.device = opts["device"]
    return cfg, opts


def run_eval(ckpt_path: str, override_items: list[str]) -> dict:
    import torch

    from .checkpoint import atomic_write_json, load_checkpoint
    from .complexity import measure_complexity
    from .data import DevicePreprocess, build_data
    from .engine import autocast_dtype, evaluate, model_from_checkpoint, progress_enabled, resolve_device

    overrides = _parse_overrides(override_items)
    ckpt = load_checkpoint(ckpt_path)
    cfg, opts = eval_config(ckpt, overrides)
    device = resolve_device(str(opts["device"]))
    amp = autocast_dtype(opts["amp"], device)
    model, args = model_from_checkpoint(ckpt, use_ema=bool(opts["use_ema"]))
    resolution = int(cfg.model.resolution)
    complexity = measure_complexity(model, resolution)
    data = build_data(cfg, resolution, train=False, pin_memory=device.type == "cuda")
    if ckpt.get("classes") and list(ckpt["classes"]) != data.classes:
        raise UserError(f"the evaluation data's classes differ from the checkpoint's ({len(data.classes)} vs "
                        f"{len(ckpt['classes'])} classes, e.g. '{data.classes[0]}' vs '{ckpt['classes'][0]}'): "
                        f"point data.root at the dataset the model was trained on")
    channels_last = bool(cfg.trainer.get("channels_last", True))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    prep = DevicePreprocess(cfg.data.normalization, device, channels_last)
    metrics = evaluate(model, data.val_loader, prep, amp, desc="eval", progress=progress_enabled(opts["progress"]))
    result = {
        **metrics,
        **complexity,
        "checkpoint": str(Path(ckpt_path).resolve()),
        "alpha": args.alpha,
        "resolution": resolution,
        "variant": args.variant,
        "use_ema": bool(opts["use_ema"]),
        "dataset": cfg.data.name,
        "eval_preset": cfg.data.get("eval_preset", "default"),
        "data_root": str(cfg.data.root) if cfg.data.root else None,
        "split": cfg.data.val_split,
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
        "device": str(device),
        "amp": opts["amp"],
        "model_args": {**args.to_dict(), "resolution": resolution},
    }
    out = Path(opts["out"]) if opts["out"] else Path(ckpt_path).with_name("eval.json")
    atomic_write_json(out, result)
    result["out"] = str(out)
    return result


def eval_cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mobilenet-eval",
        description="Evaluate a mobilenet-train checkpoint on its validation data (rebuilt from the checkpoint).",
        epilog="overrides: any key of the checkpoint's config (data.root=..., data.batch_size=..., "
               "data.num_workers=..., model.resolution=...) and use_ema=true, out=PATH, device=cpu|cuda, "
               "amp=none|bf16|fp16, progress=true|false",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by mobilenet-train (e.g. checkpoints/best.pt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        r = run_eval(ns.checkpoint, ns.overrides)
    except UserError as e:
        fail("mobilenet-eval", e)
    print(f"checkpoint  {r['checkpoint']}{' (EMA weights)' if r['use_ema'] else ''}")
    print(f"model       MobileNet v1 {r['variant']} alpha={r['alpha']} resolution={r['resolution']}: "
          f"{r['params'] / 1e6:.2f}M params, {r['mult_adds'] / 1e6:.1f}M mult-adds")
    print(f"data        {r['dataset']} {r['split']} ({r['num_images']} images, eval preset {r['eval_preset']})")
    print(f"top-1       {r['top1']:.2f}%")
    print(f"top-5       {r['top5']:.2f}%")
    print(f"loss        {r['loss']:.4f}")
    print(f"speed       {r['images_per_sec']:.0f} images/s on {r['device']}")
    print(f"written     {r['out']}")

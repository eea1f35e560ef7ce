"""Resuming: which checkpoint (trainer.resume), whether it fits the config, and restoring it
into the TrainParts and a TrainState (the model weights go in when the parts are built)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from .. import distributed
from ..checkpoint import load_checkpoint, newest_readable, set_rng_state
from ..errors import UserError
from ..model import ModelArgs
from .loop import TrainState
from .setup import TrainParts

log = logging.getLogger("mobilenet_train")


def resume_checkpoint(tcfg, run_dir: Path, args: ModelArgs, cfg: DictConfig) -> tuple[Path | None, dict | None]:
    """(path, checkpoint) that trainer.resume names, checked against the config; (None, None): a fresh run.
    `auto` takes the newest checkpoint of the run dir that reads, and says which it skipped and why."""
    resume = tcfg.resume
    if resume in (None, False, "none", "false", "no"):
        return None, None
    if resume == "auto":
        path, ckpt = _newest_in_run(run_dir / "checkpoints")
    else:
        path = Path(str(resume)).expanduser()
        if not path.is_file():
            raise UserError(f"trainer.resume={resume}: no such checkpoint file (use auto, none, or a path to last.pt)")
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt:
            raise UserError(f"cannot resume from {path}: it holds weights only (no training state); "
                            f"start from it with +experiment=finetune model.init={path}")
    if ckpt is not None:
        _check_resume_matches(ckpt, args, cfg, path)
    return path, ckpt


def _newest_in_run(ckpt_dir: Path) -> tuple[Path | None, dict | None]:
    path, ckpt, skipped = newest_readable(ckpt_dir)
    for bad, reason in skipped:
        log.warning("resume: skipped %s: %s", bad, reason)
    if ckpt is None and skipped:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in skipped)
        raise UserError(f"no checkpoint in {ckpt_dir} reads ({reasons}): move them away to start the run over, or "
                        f"resume from a copy with trainer.resume=PATH (trainer.keep_last=N keeps older ones)")
    if skipped:
        log.warning("resume: using %s (epoch %d, step %d), the newest checkpoint that reads", path, ckpt["epoch"],
                    ckpt["step"])
    return path, ckpt


def _check_resume_matches(ckpt: dict, args: ModelArgs, cfg: DictConfig, path: Path) -> None:
    stored = {**ModelArgs().to_dict(), **ckpt["model_args"]}  # keys added since count as their defaults
    diffs = [f"model.{k}={stored.get(k)} (config: {v})" for k, v in args.to_dict().items() if stored.get(k) != v]
    stored_qat = bool(ckpt["config"].get("qat", {}).get("enabled"))
    if stored_qat != bool(cfg.qat.enabled):
        diffs.append(f"qat.enabled={str(stored_qat).lower()} (config: {str(bool(cfg.qat.enabled)).lower()})")
    stored_optim = ckpt["config"].get("optim", {}).get("name")
    if stored_optim != cfg.optim.name:
        diffs.append(f"optim={stored_optim} (config: {cfg.optim.name})")
    if diffs:
        raise UserError(f"cannot resume from {path}: it was trained with {', '.join(diffs)}; "
                        f"use the same settings, or trainer.resume=none with a new hydra.run.dir")


def already_finished(ckpt: dict, epochs: int, run_dir: Path) -> dict:
    score = "val mAP" if (ckpt.get("config") or {}).get("task") == "detection" else "val top-1"
    log.info("run already finished: %d of %d epochs done, best %s %.2f%% at epoch %d (%s). "
             "Nothing to do; set trainer.epochs higher to train longer.", ckpt["epoch"], epochs, score,
             ckpt.get("best_val_top1", float("nan")), ckpt.get("best_epoch", 0), run_dir / "checkpoints")
    return {**ckpt.get("metrics", {}), "already_finished": True}


def resumed_state(ckpt: dict | None, dist_info: distributed.DistInfo, path: Path | None) -> TrainState:
    """Where the checkpoint stopped: epoch, step, micro-batches into the epoch, best so far."""
    if ckpt is None:
        return TrainState()
    state = TrainState(**{k: ckpt[k] for k in asdict(TrainState()) if k in ckpt})
    if ckpt.get("world_size", 1) != dist_info.world_size and state.batches_done:
        raise UserError(f"{path} was written mid-epoch by {ckpt.get('world_size')} processes; resume it "
                        f"with the same world size (now {dist_info.world_size}), or from the epoch's start")
    return state


def restore(ckpt: dict | None, parts: TrainParts, state: TrainState, dist_info: distributed.DistInfo) -> torch.Tensor:
    """Optimizer, scaler, EMA and RNG states from `ckpt`; returns this rank's epoch sums so far
    (loss x n, correct, n) on the device: zeros unless the checkpoint was written mid-epoch."""
    epoch_totals = torch.zeros(3, dtype=torch.float64)
    if ckpt is not None:
        parts.optimizer.load_state_dict(ckpt["optimizer"])
        parts.scaler.load_state_dict(ckpt["scaler"])
        if parts.ema is not None and ckpt.get("ema") is not None:
            parts.ema.load_state_dict(ckpt["ema"])
        per_rank = ckpt.get("rng_per_rank") or []
        set_rng_state(per_rank[dist_info.rank] if len(per_rank) == dist_info.world_size else ckpt["rng"])
        if state.batches_done and len(ckpt.get("epoch_totals_per_rank") or []) == dist_info.world_size:
            epoch_totals = torch.tensor(ckpt["epoch_totals_per_rank"][dist_info.rank], dtype=torch.float64)
    # The schedule is a pure function of the config and the step, so a resumed run follows the
    # current config; the stored scheduler state is informational.
    parts.scheduler.step_update(num_updates=state.step)
    return epoch_totals.to(parts.prep.device)

"""Self-describing checkpoints, written atomically, read with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and evaluate the model without the run
dir (model args, resolved config, class names, complexity, metrics) and everything needed
to resume training exactly (optimizer, scheduler, scaler, EMA, RNG states, position).
"""

from __future__ import annotations

import json
import os
import pickle
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .errors import UserError
from .model import MobileNetV1, ModelArgs

FORMAT = "mobilenet-train"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    atomic_write_bytes(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a toolkit checkpoint; any problem is one clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} holds objects that weights_only=True refuses to unpickle ({first}): "
                        f"it is not a mobilenet-train checkpoint") from None
    except Exception as e:  # noqa: BLE001 - truncated zips and garbage raise many different types
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__}); "
                        f"use another file, e.g. checkpoints/best.pt or an earlier last.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a mobilenet-train checkpoint (no '{FORMAT}' format tag): "
                        f"pass a checkpoint written by mobilenet-train")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this "
                        f"mobilenet-train understands ({FORMAT_VERSION}): upgrade mobilenet-train")
    for key in ("model", "model_args", "config"):
        if key not in ckpt:
            raise UserError(f"{path} is incomplete: it has no '{key}' entry")
    return ckpt


# ----------------------------------------------------------------------------- payloads


def model_payload(model, args: ModelArgs, config: dict, classes: list[str] | None, complexity: dict,
                  metrics: dict | None = None, epoch: int = 0, step: int = 0, teacher: dict | None = None,
                  **extra) -> dict:
    """What every checkpoint holds: enough to rebuild, evaluate and fine-tune the model without its
    run dir. `teacher`: the distillation teacher's identity (path, sha256, val_top1, alpha,
    temperature; None without one). `extra`: training state (the Checkpointer) or provenance
    (`import`, mobilenet-import)."""
    return {"model": model.state_dict(), "model_args": args.to_dict(), "config": config, "classes": classes,
            "complexity": complexity, "metrics": metrics if metrics is not None else {}, "epoch": epoch,
            "step": step, "teacher": teacher, **extra}


def model_from_checkpoint(ckpt: dict, use_ema: bool = False) -> tuple[MobileNetV1, ModelArgs]:
    if (ckpt.get("config", {}).get("qat") or {}).get("enabled"):
        raise UserError("this is a QAT checkpoint (a fake-quantized graph), not a float model: use a float "
                        "checkpoint here (qat.model_from_checkpoint rebuilds a QAT one)")
    args = ModelArgs(**ckpt["model_args"])
    model = MobileNetV1(args)
    state = ckpt["model"]
    if use_ema:
        if not ckpt.get("ema"):
            raise UserError("use_ema=true but this checkpoint has no EMA weights (train with trainer.ema.enabled=true)")
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    model.load_state_dict(state)
    return model, args


class Checkpointer:
    """A run's checkpoints/last.pt (every epoch, and every `every_steps` optimizer steps) and
    best.pt: the model payload plus all that an exact resume needs.

    `save` runs on every rank: each rank's RNG state (dropout differs per rank) and epoch sums
    (a mid-epoch resume needs every rank's share) are gathered; rank 0 writes.
    """

    def __init__(self, ckpt_dir: Path, parts, describe: dict, epochs: int, every_steps: int = 0,
                 world_size: int = 1, is_main: bool = True):
        self.dir, self.parts, self.describe, self.epochs = Path(ckpt_dir), parts, describe, epochs
        self.every_steps, self.world_size, self.is_main = every_steps, world_size, is_main

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def step_due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def save(self, state, metrics: dict, epoch_totals: torch.Tensor, finished_epoch: bool,
             is_best: bool = False) -> None:
        per_rank = distributed.gather_objects((rng_state(), epoch_totals.tolist()))
        if not self.is_main:
            return
        payload = self.payload(state, metrics, per_rank, finished_epoch)
        save_checkpoint(self.last, payload)
        if is_best:
            save_checkpoint(self.dir / "best.pt", payload)

    def payload(self, state, metrics: dict, per_rank: list, finished_epoch: bool) -> dict:
        """`state` is the loop's TrainState (epoch, step, batches_done, best_val_top1, best_epoch)."""
        p = self.parts
        return model_payload(
            p.model, **self.describe, metrics=metrics, **asdict(state),
            finished=finished_epoch and state.epoch >= self.epochs,
            optimizer=p.optimizer.state_dict(), scheduler=p.scheduler.state_dict(), scaler=p.scaler.state_dict(),
            ema=p.ema.state_dict() if p.ema is not None else None,
            rng=per_rank[0][0], rng_per_rank=[r for r, _ in per_rank], world_size=self.world_size,
            epoch_totals_per_rank=[t for _, t in per_rank])


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's key is an ndarray, which weights_only refuses: store it as a tensor.
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x

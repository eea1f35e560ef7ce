"""Self-describing checkpoints, written atomically, read with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and evaluate the model without the run
dir (model args, resolved config, class names, complexity, metrics) and everything needed
to resume training exactly (optimizer, scheduler, scaler, EMA, RNG states, position).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .errors import TrainingDiverged, UserError, writing
from .model import MobileNetV1, ModelArgs

FORMAT = "mobilenet-train"
FORMAT_VERSION = 1
DIGEST_KEY = "tensors_sha256"  # in the file only: load_checkpoint checks and drops it


def atomic_write_bytes(path: Path, write, size: int | None = None, make_parent: bool = True,
                       before_replace=None) -> None:
    """Call write(tmp_path), flush it to disk, then rename over `path`: readers never see a partial
    file, and a crash (power, kill) leaves the old file or the new one. An OSError (disk full,
    read-only, the directory deleted) becomes one StorageError naming `path` and `size`.
    `make_parent=False`: the directory must exist (a run dir deleted mid-run is not made again).
    `before_replace()` runs between the write and the rename (the Checkpointer rotates there)."""
    path = Path(path)
    with writing(path, size):
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            write(tmp)
            _fsync(tmp)
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
            _fsync(path.parent)  # the rename itself survives a power loss
        finally:
            with contextlib.suppress(OSError):  # a read-only or vanished directory: nothing to clean
                tmp.unlink(missing_ok=True)


# A file system that cannot fsync (some FUSE mounts) still gets its checkpoints; a full or failing one
# (ENOSPC, EIO, which network file systems report only here) does not.
NO_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.ENOSYS}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in NO_FSYNC:
            raise
    finally:
        os.close(fd)


def atomic_write_data(path: Path, data: bytes | memoryview, **kw) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_bytes(path, write, size=len(data), **kw)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_data(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def serialize(payload: dict) -> memoryview:
    """The checkpoint file's bytes: the payload with its format tag and the digest of its tensors
    (torch's zip reader does not check its CRCs, so a flipped byte would otherwise load)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    payload[DIGEST_KEY] = tensors_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory first: torch's own file writer hides ENOSPC in a RuntimeError
    return buf.getbuffer()


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write_data(path, serialize(payload))


def tensors_digest(payload: dict) -> str:
    """sha256 over every tensor of `payload` with its place (metadata edits leave it unchanged)."""
    h = hashlib.sha256()
    for place, t in _tensors(payload, ""):
        t = t.detach().cpu()
        t = t.int_repr() if t.is_quantized else t
        h.update(f"{place}:{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _tensors(obj, place: str):
    if isinstance(obj, torch.Tensor):
        yield place, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k != DIGEST_KEY:
                yield from _tensors(v, f"{place}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{place}/{i}")


class UnreadableCheckpoint(UserError):
    """A checkpoint file that cannot be used; `reason` says why in a few words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a toolkit checkpoint; any problem is one clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint(f"checkpoint {path} does not exist", "missing")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableCheckpoint(f"{path} holds objects that weights_only=True refuses to unpickle ({first}): "
                                   f"it is not a mobilenet-train checkpoint", "not a checkpoint") from None
    except Exception as e:  # noqa: BLE001 - truncated zips and garbage raise many different types
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__}); "
            f"use another file, e.g. checkpoints/best.pt or an earlier last.pt",
            f"truncated or corrupt ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UnreadableCheckpoint(f"{path} is not a mobilenet-train checkpoint (no '{FORMAT}' format tag): "
                                   f"pass a checkpoint written by mobilenet-train", "not a checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this "
                        f"mobilenet-train understands ({FORMAT_VERSION}): upgrade mobilenet-train")
    stored = ckpt.pop(DIGEST_KEY, None)  # checkpoints written before the digest have none
    if stored is not None and stored != tensors_digest(ckpt):
        raise UnreadableCheckpoint(f"{path} is corrupt: its tensors do not match the digest written with them "
                                   f"(a disk or copy error; edited by hand? drop its '{DIGEST_KEY}' entry); use "
                                   f"another file, e.g. checkpoints/best.pt or an earlier last.N.pt",
                                   "corrupt (tensor digest mismatch)")
    for key in ("model", "model_args", "config"):
        if key not in ckpt:
            raise UnreadableCheckpoint(f"{path} is incomplete: it has no '{key}' entry", f"no '{key}' entry")
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
    best.pt: the model payload plus all that an exact resume needs. `keep_last` > 1 keeps the
    older last.pt files as last.1.pt (the one before), last.2.pt, ...: a fallback for resuming.

    `save` runs on every rank: each rank's RNG state (dropout differs per rank) and epoch sums
    (a mid-epoch resume needs every rank's share) are gathered; rank 0 writes. It refuses to
    write non-finite weights, so a checkpoint is always one a run can go on from.
    """

    def __init__(self, ckpt_dir: Path, parts, describe: dict, epochs: int, every_steps: int = 0,
                 world_size: int = 1, is_main: bool = True, keep_last: int = 1):
        self.dir, self.parts, self.describe, self.epochs = Path(ckpt_dir), parts, describe, epochs
        self.every_steps, self.world_size, self.is_main, self.keep_last = every_steps, world_size, is_main, keep_last
        if is_main:
            with writing(self.dir):
                self.dir.mkdir(exist_ok=True)  # once: later writes never make a deleted run dir again

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
        check_finite_weights(payload["model"], state)
        data = serialize(payload)
        if is_best:  # before last.pt: killed in between, the resumed run writes this epoch's best.pt again
            atomic_write_data(self.dir / "best.pt", data, make_parent=False)
        atomic_write_data(self.last, data, make_parent=False, before_replace=lambda: rotate(self.dir, self.keep_last))

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


def check_finite_weights(model_state: dict, state) -> None:
    """Weights and BN statistics only: a QAT observer's range starts at +-inf and is no fault."""
    bad = [k for k, v in model_state.items() if v.is_floating_point() and _is_weight(k)
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDiverged(f"the weights became NaN/inf by step {state.step} ({bad[0]} and {len(bad) - 1} more); "
                               f"stopped without writing a checkpoint. Lower optim.lr, set trainer.grad_clip, or use "
                               f"trainer.amp=none")


def _is_weight(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("weight", "bias", "running_mean", "running_var")


# ----------------------------------------------------------------------------- rotation and fallback


def rotated(ckpt_dir: Path, k: int) -> Path:
    """last.pt (k=0), then last.1.pt, last.2.pt, ... older and older."""
    return ckpt_dir / ("last.pt" if k == 0 else f"last.{k}.pt")


def _index(path: Path) -> int | None:
    m = re.fullmatch(r"last(?:\.(\d+))?\.pt", path.name)
    return None if m is None else int(m.group(1) or 0)


def older_lasts(ckpt_dir: Path) -> list[Path]:
    """last.pt, last.1.pt, ... that exist, newest first."""
    found = [(i, p) for p in ckpt_dir.glob("last*.pt") if (i := _index(p)) is not None]
    return [p for _, p in sorted(found)]


def rotate(ckpt_dir: Path, keep: int) -> None:
    """Make room for a new last.pt: last.pt -> last.1.pt -> ... ; drop those beyond `keep`."""
    for path in older_lasts(ckpt_dir):
        if _index(path) >= max(keep - 1, 1):
            path.unlink()
    for k in range(keep - 1, 0, -1):
        if rotated(ckpt_dir, k - 1).exists():
            os.replace(rotated(ckpt_dir, k - 1), rotated(ckpt_dir, k))


def newest_readable(ckpt_dir: Path) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(path, checkpoint) of the newest training checkpoint in `ckpt_dir` that reads, and the
    (path, reason) of those skipped: last.pt first; when it fails, the newest of last.N.pt and best.pt."""
    candidates = older_lasts(ckpt_dir) + [p for p in [ckpt_dir / "best.pt"] if p.is_file()]
    skipped, readable = [], []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except UnreadableCheckpoint as e:
            skipped.append((path, e.reason))
            continue
        if "optimizer" not in ckpt:
            skipped.append((path, "weights only, no training state"))
            continue
        if not skipped:
            return path, ckpt, []
        readable.append((path, ckpt))
    if not readable:
        return None, None, skipped
    path, ckpt = max(readable, key=lambda pc: (pc[1].get("step", 0), pc[1].get("epoch", 0)))  # first on ties
    return path, ckpt, skipped


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

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

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

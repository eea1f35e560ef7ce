"""The training engine: `fit(cfg, run_dir)` trains a run; `evaluate` and `train_one_epoch` are its parts.

  setup.py    this process (device, process group, seeds, determinism) and the TrainParts (model, optimizer, ...)
  resume.py   which checkpoint to resume from; restoring it into the parts and a TrainState
  distill.py  knowledge distillation: the teacher (toolkit checkpoint or timm:NAME) and its loss
  loop.py     train_one_epoch (forward/backward, optimizer step, log window) and evaluate
  runlog.py   RunLogger: TensorBoard, metrics.jsonl, console lines
  trainer.py  fit: setup, restore, then the epoch loop with its RunLogger and Checkpointer (checkpoint.py)
"""

from ..checkpoint import model_from_checkpoint
from .loop import STOP_SYNC_EVERY, TrainState, evaluate, train_one_epoch
from .setup import TrainParts, autocast, autocast_dtype, progress_enabled, resolve_device, seed_everything
from .trainer import fit

__all__ = ["STOP_SYNC_EVERY", "TrainParts", "TrainState", "autocast", "autocast_dtype", "evaluate", "fit",
           "model_from_checkpoint", "progress_enabled", "resolve_device", "seed_everything", "train_one_epoch"]

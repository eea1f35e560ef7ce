"""`fit`: set up, restore, then the epoch loop, with a RunLogger and a Checkpointer as its hooks."""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .. import distributed, finetune
from ..checkpoint import Checkpointer
from ..complexity import format_count, measure_complexity
from ..config import validate
from ..data import DataBundle, build_data
from ..data.coco import build_detection_data
from ..detection.train import build_detector, detector_complexity
from ..errors import TrainingDiverged, UserError
from ..model import MobileNetV1, ModelArgs
from ..optim import scaled_lr
from ..preemption import Preempted, StopRequest
from .distill import build_distiller, teacher_metrics, teacher_record
from .loop import TrainState, train_one_epoch
from .resume import already_finished, restore, resume_checkpoint, resumed_state
from .runlog import RunLogger
from .scoring import evaluator
from .setup import TrainContext, TrainParts, build_parts, start_process, training_wrapper

log = logging.getLogger("mobilenet_train")

# The validation metric that picks best.pt, per config `task`.
SCORE_KEYS = {"classification": "val_top1", "detection": "val_map", "multilabel": "val_map",
              "embedding": "val_recall_at_1"}


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train `cfg` in `run_dir` (resuming if asked); returns the final metrics.

    Raises `Preempted` after writing a checkpoint when SIGUSR1/SIGUSR2/SIGTERM arrives.
    """
    validate(cfg)  # the schema's ranges and rules, also for a config built in Python
    with StopRequest() as stop:
        return _fit(cfg, Path(run_dir), stop)


def _fit(cfg: DictConfig, run_dir: Path, stop: StopRequest) -> dict:
    tcfg = cfg.trainer
    ctx = start_process(cfg, run_dir)
    run_dir, dist_info, device = ctx.run_dir, ctx.dist_info, ctx.device
    if tcfg.sync_bn and dist_info.enabled and device.type != "cuda":
        raise UserError("trainer.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel): "
                        "drop it for CPU runs")

    init = finetune.load_init(cfg)  # model.init: its architecture, and below its weights
    # An embedding student's head is sized by its teacher's embedding, so that teacher comes first.
    early = build_distiller(cfg, [], device, ctx.amp) if cfg.task == "embedding" else None
    model, args, complexity = build_task_model(cfg, early)
    epochs, accum = int(tcfg.epochs), int(tcfg.accum_steps)  # ranges checked by the schema (fit's validate)
    ckpt_path, ckpt = resume_checkpoint(tcfg, run_dir, args, cfg)
    if ckpt is not None and ckpt["epoch"] >= epochs:
        return already_finished(ckpt, epochs, run_dir)

    data: DataBundle = task_data(cfg)(cfg, args.resolution, dist_info.rank, dist_info.world_size,
                                      pin_memory=device.type == "cuda")
    steps_per_epoch = len(data.train_loader) // accum
    if steps_per_epoch < 1:
        raise UserError(f"one epoch has fewer than trainer.accum_steps={accum} batches: lower it or data.batch_size")

    # A bad teacher stops here, before training.
    distiller = early if early is not None else build_distiller(cfg, data.classes, device, ctx.amp)
    state = resumed_state(ckpt, dist_info, ckpt_path)
    parts = build_parts(cfg, ctx, model, ckpt["model"] if ckpt else None, init, state.epoch, epochs, steps_per_epoch,
                        distill=distiller, step=state.step, classes=data.classes)
    epoch_totals = restore(ckpt, parts, state, dist_info)
    logger = RunLogger(run_dir, cfg, dist_info.is_main, ctx.progress, state.epoch if ckpt is not None else None)
    _announce(cfg, ctx, args, complexity, data, steps_per_epoch)
    if ckpt is not None:
        log.info("resumed from %s: epoch %d, step %d%s", ckpt_path, state.epoch, state.step,
                 f", {state.batches_done} batches into the epoch" if state.batches_done else "")
    describe = {"args": args, "config": OmegaConf.to_container(cfg, resolve=True), "classes": data.classes,
                "complexity": complexity, "teacher": teacher_record(distiller, cfg)}
    _note_teacher_change(ckpt, describe["teacher"])
    checkpointer = Checkpointer(run_dir / "checkpoints", parts, describe, epochs, int(tcfg.checkpoint_every_steps or 0),
                                dist_info.world_size, dist_info.is_main, int(tcfg.keep_last))
    trainer = Trainer(cfg, ctx, parts, data, state, epoch_totals, logger, checkpointer, stop, epochs,
                      dict(ckpt.get("metrics", {})) if ckpt is not None else {})
    try:
        metrics = trainer.run()
    except BaseException:
        logger.close(quiet=True)  # a second error from a full disk must not hide the first
        raise
    logger.close()
    return metrics


def build_task_model(cfg: DictConfig, distiller=None) -> tuple[torch.nn.Module, ModelArgs, dict]:
    """The model of `cfg.task` (the classifier, SSD on it, or an embedding network whose head is sized
    by `distiller`'s teacher unless model.embedding_dim says), its args and its complexity."""
    if cfg.task == "detection":
        model, args = build_detector(cfg)
        return model, args, detector_complexity(model, args.resolution)
    args = ModelArgs.from_config(cfg.model)
    if cfg.task == "embedding" and not args.embedding_dim:
        args = dataclasses.replace(args, embedding_dim=distiller.embedding_dim())
    model = MobileNetV1(args)
    return model, args, measure_complexity(model, args.resolution)


def task_data(cfg: DictConfig):
    """The loader builder of `cfg.task`: COCO boxes, a label table, or class folders."""
    if cfg.task == "detection":
        return build_detection_data
    if cfg.task == "multilabel":
        from ..data import build_multilabel_data

        return build_multilabel_data
    return build_data


def _announce(cfg: DictConfig, ctx: TrainContext, args: ModelArgs, complexity: dict, data: DataBundle,
              steps_per_epoch: int) -> None:
    dist_info, global_batch = ctx.dist_info, int(cfg.data.batch_size)
    log.info("MobileNet v1 (%s) alpha=%s resolution=%d: %s params, %s mult-adds; %d classes; device %s%s",
             args.variant, args.alpha, args.resolution, format_count(complexity["params"]),
             format_count(complexity["mult_adds"]), args.num_classes, ctx.device,
             f" x {dist_info.world_size} processes" if dist_info.enabled else "")
    log.info("%d train / %d val images, global batch %d (%d accumulation steps), peak lr %.4g, %d steps per epoch, "
             "run dir %s", len(data.train_loader.dataset), len(data.val_loader.dataset), global_batch,
             int(cfg.trainer.accum_steps), scaled_lr(cfg.optim, global_batch), steps_per_epoch, ctx.run_dir)


def _note_teacher_change(ckpt: dict | None, teacher: dict | None) -> None:
    """A resumed run may change its teacher (e.g. distill after plain training); say so."""
    if ckpt is None:
        return
    before = (ckpt.get("teacher") or {}).get("sha256")
    now = (teacher or {}).get("sha256")
    if before != now:
        log.warning("resuming with another teacher than the checkpoint's (%s -> %s)",
                    (ckpt.get("teacher") or {}).get("path"), (teacher or {}).get("path"))


@dataclass
class Trainer:
    """The epoch loop: train, evaluate, report (logger), save (checkpointer); a stop signal ends
    it right after a checkpoint."""

    cfg: DictConfig
    ctx: TrainContext
    parts: TrainParts
    data: DataBundle
    state: TrainState
    epoch_totals: torch.Tensor  # this rank's (loss x n, correct, n) of the epoch so far
    logger: RunLogger
    checkpointer: Checkpointer
    stop: StopRequest
    epochs: int
    metrics: dict               # the last epoch's; every checkpoint carries them

    def run(self) -> dict:
        while self.state.epoch < self.epochs:
            self._unfreeze_when_due()
            train_metrics = self._train_epoch()
            if train_metrics is None:  # a stop signal, after a whole step
                self._save(False)
                self._preempted(f"stopped on {signal.Signals(self._signum()).name} at epoch {self.state.epoch + 1}, "
                                f"step {self.state.step} ({self.state.batches_done} batches into the epoch)")
            self._end_epoch(train_metrics)
            if self.state.epoch < self.epochs and distributed.any_rank(self.stop.requested, self.ctx.device):
                self._preempted(f"stopped on a signal after epoch {self.state.epoch}")
        self.logger.finish(self._hparams(), self.metrics, self.state, self.checkpointer.dir)
        return self.metrics

    def _desc(self) -> str:
        return f"epoch {self.state.epoch + 1}/{self.epochs}"

    def _train_epoch(self) -> dict | None:
        loader = self.data.train_loader
        loader.sampler.set_epoch(self.state.epoch, start=self.state.batches_done * loader.batch_size)
        return train_one_epoch(self.parts, loader, self.state, self.cfg.trainer, self._desc(), self.logger,
                               self.ctx.progress, self.ctx.dist_info, after_step=self._after_step, stop=self.stop,
                               epoch_totals=self.epoch_totals)

    def _after_step(self) -> None:
        if self.cfg.qat.enabled:
            from ..qat import apply_freezing

            apply_freezing(self.parts.model, self.state.step, self.cfg.qat)
        if self.checkpointer.step_due(self.state.step):
            self._save(False)

    def _save(self, finished_epoch: bool, is_best: bool = False) -> None:
        self.checkpointer.save(self.state, self.metrics, self.epoch_totals, finished_epoch, is_best)

    def _end_epoch(self, train_metrics: dict) -> None:
        """Evaluate (when due), keep the best, report the epoch and save it."""
        s, desc = self.state, self._desc()
        s.epoch += 1
        s.batches_done = 0
        self.epoch_totals.zero_()
        metrics = {"epoch": s.epoch, "step": s.step, **train_metrics}
        do_eval = s.epoch % max(1, int(self.cfg.trainer.eval_every_epochs)) == 0 or s.epoch == self.epochs
        if do_eval:
            metrics.update(self._evaluate())
        metrics.update(self._identity())
        score = SCORE_KEYS[self.cfg.task]  # what "best" means; the state keeps it as best_val_top1
        is_best = do_eval and metrics[score] > s.best_val_top1
        if is_best:
            s.best_val_top1, s.best_epoch = metrics[score], s.epoch
        metrics[f"best_{score}"] = s.best_val_top1
        self.metrics = metrics
        self.logger.epoch(metrics, desc)
        self._save(True, is_best)

    def _evaluate(self) -> dict:
        p, n, progress = self.parts, self.state.epoch, self.ctx.progress
        score = evaluator(self.cfg.task)
        val = score(p.model, self.data.val_loader, p.prep, p.amp, desc=f"val {n}", progress=progress)
        if not math.isfinite(val.get("loss", 0.0)):  # finite training loss, blown-up BN statistics
            raise TrainingDiverged(f"the validation loss became {val['loss']} after epoch {n}; stopped without "
                                   f"writing a checkpoint. Lower optim.lr, set trainer.grad_clip, or use "
                                   f"trainer.amp=none")
        out = {f"val_{k}": v for k, v in val.items() if k != "images_per_sec" and not isinstance(v, list)}
        if p.ema is not None:
            val_ema = score(p.ema.module, self.data.val_loader, p.prep, p.amp, desc=f"val ema {n}",
                               progress=progress)
            out.update({f"val_ema_{k}": v for k, v in val_ema.items()
                        if k != "images_per_sec" and not isinstance(v, list)})
        return out

    def _identity(self) -> dict:
        """Every metrics line names its model, data and planned length, so a report needs nothing
        else (mobilenet-report marks a run whose last epoch < epochs_total as still in progress)."""
        args = self.checkpointer.describe["args"]
        return {"task": str(self.cfg.task), "alpha": args.alpha, "resolution": args.resolution, "variant": args.variant,
                **self.checkpointer.describe["complexity"], "dataset": self.cfg.data.name, "epochs_total": self.epochs,
                **teacher_metrics(self.checkpointer.describe["teacher"])}

    def _hparams(self) -> dict:
        ident = self._identity()
        return {**{k: ident[k] for k in ("alpha", "resolution", "variant", "mult_adds", "params", "dataset")},
                "optimizer": self.cfg.optim.name, "batch_size": int(self.cfg.data.batch_size), "epochs": self.epochs,
                **teacher_metrics(self.checkpointer.describe["teacher"])}

    def _unfreeze_when_due(self) -> None:
        p, freeze_epochs = self.parts, int(self.cfg.trainer.freeze_backbone_epochs)
        if not p.frozen_backbone or self.state.epoch < freeze_epochs:
            return
        log.info("epoch %d: the backbone trains from now on (trainer.freeze_backbone_epochs=%d)",
                 self.state.epoch + 1, freeze_epochs)
        finetune.set_backbone_frozen(p.model, False)
        p.frozen_backbone = False
        # DDP registers the trainable parameters when built, so build the wrapper again.
        tcfg = self.cfg.trainer
        p.train_model = training_wrapper(p.model, self.ctx.dist_info, self.ctx.device, bool(tcfg.compile),
                                         str(tcfg.compile_mode))

    def _signum(self) -> int:
        return self.stop.signum or signal.SIGTERM  # another rank's signal leaves ours unset

    def _preempted(self, message: str) -> None:
        """Every rank waits for the checkpoint on disk, then the run unwinds with `Preempted`."""
        distributed.barrier()
        log.info("%s: checkpoint %s", message, self.checkpointer.last)
        raise Preempted(self._signum(), self.checkpointer.last, self.stop.previous)

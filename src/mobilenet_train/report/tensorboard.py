"""`mobilenet-report tb=DIR`: every result as one TensorBoard run (its epoch scalars and hparams)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from .runs import Result, TaskResult, number
from .tables import PROG

TB_MARKER = ".mobilenet-report"  # marks a TensorBoard dir this command wrote (and may replace)


def _hparams(r: Result | TaskResult) -> tuple[dict, dict]:
    """(hparams, metrics) of the HParams tab: top-1/top-5, or the task's metrics (NaN: not measured)."""
    hparams = {"alpha": r.alpha, "resolution": r.resolution, "variant": r.variant, "mult_adds": r.mult_adds,
               "params": r.params, "dataset": r.dataset or "?", "source": r.source}
    if isinstance(r, TaskResult):
        hparams["task"] = r.task
        return hparams, {f"hparam/{k}": v if number(v) else float("nan") for k, v in r.metrics.items()}
    return hparams, {"hparam/top1": r.top1, "hparam/top5": r.top5 if number(r.top5) else float("nan")}


def write_tensorboard(results: list[Result | TaskResult], tb_dir: Path) -> None:
    """One TensorBoard run per result (its epoch scalars and hparams), all in `tb_dir`, so the
    Scalars and HParams tabs compare the whole sweep. Built aside, then swapped in."""
    from torch.utils.tensorboard import SummaryWriter

    if tb_dir.exists() and any(tb_dir.iterdir()) and not (tb_dir / TB_MARKER).exists():
        raise UserError(f"tb={tb_dir} exists and was not written by {PROG}: choose a new or empty directory")
    tmp = tb_dir.with_name(f".{tb_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for r in results:
            with SummaryWriter(str(tmp / r.name)) as w:
                for m in r.history:
                    step = int(m.get("step") or m.get("epoch") or 0)
                    for key, value in m.items():
                        if number(value) and (key.startswith(("val_", "train_")) or key in ("images_per_sec", "lr")):
                            group, _, metric = (key.partition("_") if key.startswith(("val_", "train_"))
                                                else ("epoch", "", key))
                            w.add_scalar(f"{group}/{metric}", value, step)
                w.add_hparams(*_hparams(r), run_name=".")
        (tmp / TB_MARKER).write_text(f"written by {PROG}; replaced by its next run\n")
        if tb_dir.exists():
            shutil.rmtree(tb_dir)
        tmp.rename(tb_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

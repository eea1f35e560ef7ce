"""`mobilenet-train`: check the command line, then let Hydra compose the config and run `fit`."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .. import distributed, faults
from ..config import preflight
from ..config.compose import CONFIG_MODULE
from ..config.help import train_help
from ..errors import UserError, fail
from ..preemption import EXIT_PREEMPTED, Preempted, requeue_through_submitit

PROG = "mobilenet-train"
log = logging.getLogger("mobilenet_train")


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


def _preempted(e: Preempted, launch) -> float | None:
    log.warning("%s", e)
    distributed.cleanup()
    if launch.rank == 0:
        requeue_through_submitit(e.signum, e.previous_handlers)  # exits when submitit requeues
    if launch.launcher == "submitit":
        return None  # submitit's rank 0 requeues the whole job; the other tasks just end
    sys.exit(EXIT_PREEMPTED)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def _train_task(cfg: DictConfig) -> float | None:
    from ..engine import fit

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    launch = distributed.detect_launch()
    if launch.rank != 0:
        _leave_logs_to_rank_zero()
    faults.quiet_background_writes()
    try:
        return fit(cfg, run_dir).get("val_top1")  # the value a Hydra sweeper optimises
    except Preempted as e:
        return _preempted(e, launch)
    except Exception as e:  # noqa: BLE001 - bad input and known faults end in one line; the rest is a bug
        err = faults.training_fault(e, run_dir)
        if err is None:
            raise
        if type(err) is UserError:
            _remove_if_empty_run(run_dir)
        fail(PROG, err)
    except KeyboardInterrupt:
        log.warning("interrupted: resume later from %s", run_dir / "checkpoints" / "last.pt")
        sys.exit(130)
    finally:
        distributed.cleanup()


def main() -> None:
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(train_help())
        return
    try:
        sys.argv[1:] = preflight(args)
    except UserError as e:
        fail(PROG, e)
    _train_task()


if __name__ == "__main__":
    main()

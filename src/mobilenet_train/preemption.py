"""Preemption: Slurm's warning signal -> finish the step, checkpoint mid-epoch, requeue.

Slurm warns a job before killing it: `--signal=USR1@120` (our sbatch script), USR2 (submitit's
default) or SIGTERM (preemption, `scancel`). The handler only sets a flag; the training loop
looks at it after each optimizer step (all ranks agree through one small all-reduce), rank 0
writes `last.pt` with the sampler position, and `Preempted` unwinds the run. Then:
  submitit   rank 0 hands over to submitit's own handler, which pickles the job again and runs
             `scontrol requeue` (for the time-limit warning; on SIGTERM Slurm requeues by itself)
  otherwise  every rank exits with EXIT_PREEMPTED (75); scripts/slurm/train.sbatch requeues the
             job on that code, and torchrun --max-restarts restarts the workers, which resume.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("mobilenet_train")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", which is what a requeue does
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Preempted(Exception):
    """Training stopped on a signal after writing its checkpoint."""

    def __init__(self, signum: int, checkpoint, previous_handlers: dict | None = None):
        self.signum = signum
        self.checkpoint = checkpoint
        self.previous_handlers = previous_handlers or {}  # what was installed before ours (submitit's)
        super().__init__(f"stopped on {signal.Signals(signum).name}; resume from {checkpoint}")


class StopRequest:
    """Turns the stop signals into a flag for the length of a `with` block."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            # Not log.warning: the logging module's locks are not safe inside a signal handler.
            os.write(2, f"mobilenet-train: {signal.Signals(signum).name} received: stopping after this "
                        f"step and writing a checkpoint\n".encode())

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for s in STOP_SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def requeue_through_submitit(signum: int, previous_handlers: dict) -> None:
    """Under submitit, let its own handler requeue the job (it exits the process on success)."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or signum == signal.SIGTERM:
        return  # not submitit, or a preemption that Slurm requeues itself
    try:
        from submitit.core.job_environment import JobEnvironment
    except ImportError:
        return
    usr_sig = JobEnvironment._usr_sig()
    handler = previous_handlers.get(usr_sig)
    if callable(handler):
        log.info("handing over to submitit to requeue the job")
        handler(usr_sig, None)

"""Faults of the machine a command runs on, as the one line the command ends with.

Write sites raise `errors.StorageError` themselves (errors.writing: they know the file and its
size); this module is the one place that turns what reaches a command's top into its last line:
for a training run it adds what survived (the newest checkpoint that reads) and how to go on; a
DataLoader worker killed by the system and an OSError nobody translated get a line too. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from pathlib import Path

from .errors import EXIT_IO, RunFault, StorageError, TrainingDiverged, UserError, remedy

WORKER_DIED = re.compile(r"DataLoader worker \(pids?\(?s?\)? ?([\d, ]+)\)? (?:is killed by signal: (\w[\w ]*)|"
                         r"exited unexpectedly)")


def quiet_background_writes() -> None:
    """A full disk fails TensorBoard's writer thread and the train.log handler too: the thread's
    error comes back at the writer's next call (a StorageError), the log handler's is dropped, so
    neither prints a traceback before the run's one line."""
    logging.raiseExceptions = False
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return  # installed already (a command run twice in one process)

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.quiet_tensorboard = True
    threading.excepthook = hook


def signal_name(description: str) -> str:
    """PyTorch names the signal by its description ("Killed"): SIGKILL."""
    names = {signal.strsignal(s): s.name for s in signal.Signals}
    return names.get(description.strip(), description.strip())


def survivors(run_dir: Path) -> tuple[str, bool]:
    """(what of the run survived, whether anything did): the newest checkpoint that reads."""
    from .checkpoint import newest_readable  # torch: only when a run failed

    if not run_dir.is_dir():
        return f"the run dir {run_dir} is gone, so no checkpoint survived", False
    path, ckpt, _ = newest_readable(run_dir / "checkpoints")
    if ckpt is None:
        return "no checkpoint was written yet", False
    where = f"epoch {ckpt['epoch'] + 1} at step {ckpt['step']}" if ckpt.get("batches_done") else \
        f"end of epoch {ckpt['epoch']}"
    return f"the previous checkpoint {path.relative_to(run_dir)} ({where}) is intact", True


def training_fault(e: BaseException, run_dir: Path) -> UserError | None:
    """The error a training run ends with for `e`, or None when `e` is not a known fault."""
    if isinstance(e, StorageError):
        e.base = run_dir
        intact, resumable = survivors(run_dir)
        if not run_dir.is_dir():
            e.advice = f"{intact}; run the same command to start over"
        else:
            e.advice = (f"{intact}; {remedy(e.errno, e.path)} and run the same command to "
                        f"{'resume' if resumable else 'start over'}")
        return e
    if isinstance(e, TrainingDiverged):
        intact, resumable = survivors(run_dir)
        then = ", and a run with a lower optim.lr resumes from it" if resumable else ""
        return TrainingDiverged(f"{e}; {intact}{then}")
    if isinstance(e, UserError):
        return e
    died = WORKER_DIED.search(str(e)) if isinstance(e, RuntimeError) else None
    if died:
        how = f"was killed by {signal_name(died.group(2))}" if died.group(2) else "died"
        return worker_fault(f"a DataLoader worker (pid {died.group(1).strip()}) {how} mid-epoch", run_dir)
    if isinstance(e, (ConnectionError, EOFError)) and _raised_in_dataloader(e):
        # A worker killed while the main process took a batch from it: the socket it was sent on breaks.
        return worker_fault(f"a DataLoader worker died mid-epoch ({type(e).__name__} receiving a batch from it)",
                            run_dir)
    if isinstance(e, OSError):
        return os_fault(e)
    return None


def worker_fault(what: str, run_dir: Path) -> RunFault:
    intact, resumable = survivors(run_dir)
    return RunFault(f"{what}, often the out-of-memory killer (see dmesg): {intact}; lower data.num_workers or "
                    f"data.batch_size, or give the job more memory, and run the same command to "
                    f"{'resume' if resumable else 'start over'}")


def _raised_in_dataloader(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/torch/utils/data/" in name or "/multiprocessing/" in name:
            return True
        tb = tb.tb_next
    return False


def os_fault(e: OSError) -> RunFault:
    """An OSError no write site translated (a directory made, a file listed): one line with its file."""
    where = f" ({e.filename})" if e.filename else ""
    path = Path(e.filename) if e.filename else None
    return RunFault(f"{(e.strerror or str(e)).lower()}{where}: {remedy(e.errno, path)} and run the same command again",
                    exit_code=EXIT_IO)

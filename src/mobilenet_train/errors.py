"""How errors read: bad user input (UserError, exit 2) and faults of the machine the run is on
(StorageError, exit 74), each printed by the CLIs as one line naming the cause and the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path

EXIT_USAGE = 2  # bad input: config, paths, checkpoints
EXIT_DIVERGED = 3  # training stopped on a non-finite or exploding loss
EXIT_OSERR = 71  # EX_OSERR: the system killed a part of the run (a DataLoader worker)
EXIT_IO = 74  # EX_IOERR: a write or read the file system refused (full, read-only, gone)


class UserError(Exception):
    """Bad input the user can fix; the message names the problem and the fix."""

    exit_code = EXIT_USAGE


class TrainingDiverged(UserError):
    exit_code = EXIT_DIVERGED


class RunFault(UserError):
    """A fault of the machine, not of the input: the message says what survived and what to do."""

    exit_code = EXIT_OSERR

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class StorageError(RunFault):
    """The file system refused a write of `path`: the message names it, its size and what to do.
    The command that catches it may give `base` (paths shown relative to it) and its own `advice`
    (faults.py: the run's last checkpoint)."""

    exit_code = EXIT_IO

    def __init__(self, reason: str, path: Path, size: int | None, advice: str, err_no: int | None = None):
        self.reason, self.path, self.size, self.advice, self.errno = reason, Path(path), size, advice, err_no
        self.base: Path | None = None
        super().__init__(reason)

    @property
    def cause(self) -> str:
        shown = self.path
        if self.base is not None and self.path.is_relative_to(self.base):
            shown = self.path.relative_to(self.base)
        return f"{self.reason} writing {shown}{size_text(self.size)}"

    def __str__(self) -> str:
        return f"{self.cause}: {self.advice}"


# What the user does about each errno: the start of the advice ("... and run the same command").
REMEDIES = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space (the disk quota is used up)",
    errno.EROFS: "make the file system writable again (or point the output elsewhere)",
    errno.EACCES: "give this user write permission there (or point the output elsewhere)",
    errno.EPERM: "give this user write permission there (or point the output elsewhere)",
    errno.EIO: "check the disk (dmesg), or point the output at another one,",
}


def remedy(err_no: int | None, path: Path | None = None) -> str:
    if err_no == errno.ENOENT and path is not None:
        return f"{path.parent} was deleted while the command ran: recreate it (or point the output elsewhere)"
    return REMEDIES.get(err_no, "fix the file system")


def size_text(size: int | None) -> str:
    if not size:
        return ""
    return f" ({size / 1e6:.1f} MB)" if size >= 1e5 else f" ({size / 1e3:.1f} kB)"


def storage_error(path: Path, err: OSError, size: int | None = None) -> StorageError:
    """An OSError raised writing `path` as one StorageError (a tmp name is reported as its target)."""
    path = Path(path)
    reason = (err.strerror or os.strerror(err.errno or 0) or type(err).__name__).lower()
    if err.errno == errno.ENOENT:
        reason = "its directory no longer exists"
    advice = f"nothing was half-written; {remedy(err.errno, path)} and run the same command again"
    return StorageError(reason, path, size, advice, err.errno)


@contextlib.contextmanager
def writing(path: Path, size: int | None = None):
    """Turn an OSError raised while writing `path` into one StorageError."""
    try:
        yield
    except OSError as e:
        raise storage_error(path, e, size) from None


def fail(prog: str, err: Exception) -> NoReturn:  # noqa: F821
    message = " ".join(str(err).split())  # one line, whatever the message holds
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(getattr(err, "exit_code", EXIT_USAGE))

"""One error type for bad user input: the CLIs print its message as one line and exit 2."""

from __future__ import annotations

import sys

EXIT_USAGE = 2  # bad input: config, paths, checkpoints
EXIT_DIVERGED = 3  # training stopped on a non-finite loss


class UserError(Exception):
    """Bad input the user can fix; the message names the problem and the fix."""

    exit_code = EXIT_USAGE


class TrainingDiverged(UserError):
    exit_code = EXIT_DIVERGED


def fail(prog: str, err: Exception) -> NoReturn:  # noqa: F821
    message = " ".join(str(err).split())  # one line, whatever the message holds
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(getattr(err, "exit_code", EXIT_USAGE))

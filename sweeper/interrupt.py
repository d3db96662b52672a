"""Ctrl-C and SIGTERM as one clean interruption.

Inside :func:`interruptible`, SIGINT and SIGTERM raise :class:`Interrupted` (a
``KeyboardInterrupt``) in the main thread, so the code that is running unwinds through its
``finally`` blocks: the sweep fails and re-queues its running trials in Optuna, ends the MLflow
runs as KILLED and writes its results file; a single run ends its MLflow run. The entry points
then print one line and exit with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM),
the shell's convention, instead of a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):  # noqa: N818 - what the user did, not an error
    """SIGINT or SIGTERM reached the process."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while inside (main thread only; elsewhere
    the handlers cannot be set and nothing changes). The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal (a plain ``KeyboardInterrupt`` is Ctrl-C: 130)."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def report_and_exit(exc: KeyboardInterrupt, what: str) -> None:
    """One line on stderr, then exit with the signal's code (no traceback)."""
    name = exc.signame if isinstance(exc, Interrupted) else "SIGINT"
    print(f"interrupted ({name}): {what}", file=sys.stderr)
    sys.exit(exit_code(exc))

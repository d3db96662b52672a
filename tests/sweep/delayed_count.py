"""``python -m delayed_count -m ...``: the sweeper with a pause of ``$DELAYED_COUNT_SECONDS``
between counting a study's trials and asking for new ones, which makes the race between
several sweepers on one study (both count room for the last trial, both ask) happen on every
run instead of now and then; with the storage lock around the two steps it cannot.

With ``$DELAYED_COUNT_BARRIER`` (a folder) and ``$DELAYED_COUNT_WORKERS`` (n), each worker waits
before it first takes the storage lock until n workers have got there, so that they all
compete for the first trials even when a loaded machine starts them seconds apart (else the
first one up can take every trial before the others have imported torch)."""

from __future__ import annotations

import os
import runpy
import time
from pathlib import Path

import sweeper.ask_lock
import sweeper.study

_count_states = sweeper.study.count_states


def slow_count_states(study):
    counts = _count_states(study)
    time.sleep(float(os.environ.get("DELAYED_COUNT_SECONDS", "1")))
    return counts


_take_lock = sweeper.ask_lock.AskLock.__call__
_waited = []


def _wait_for_the_others() -> None:
    folder, n = (
        os.environ.get("DELAYED_COUNT_BARRIER"),
        int(os.environ.get("DELAYED_COUNT_WORKERS", "0")),
    )
    if not folder or n < 2:
        return
    barrier = Path(folder)
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while sum(1 for _ in barrier.iterdir()) < n and time.monotonic() < deadline:
        time.sleep(0.1)


def take_lock_after_the_others(self):
    if not _waited:
        _waited.append(True)
        _wait_for_the_others()
    return _take_lock(self)


sweeper.study.count_states = slow_count_states
sweeper.ask_lock.AskLock.__call__ = take_lock_after_the_others
runpy.run_module("sweeper", run_name="__main__", alter_sys=True)

"""``python -m delayed_count -m ...``: the sweeper with a pause of ``$DELAYED_COUNT_SECONDS``
between counting a study's trials and asking for new ones, which makes the race between
several sweepers on one study (both count room for the last trial, both ask) happen on every
run instead of now and then; with the storage lock around the two steps it cannot."""

from __future__ import annotations

import os
import runpy
import time

import sweeper.study

_count_states = sweeper.study.count_states


def slow_count_states(study):
    counts = _count_states(study)
    time.sleep(float(os.environ.get("DELAYED_COUNT_SECONDS", "1")))
    return counts


sweeper.study.count_states = slow_count_states
runpy.run_module("sweeper", run_name="__main__", alter_sys=True)

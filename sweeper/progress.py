"""Where a sweep stands: trials finished of the target, time spent, an estimate of the rest."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna

from sweeper.study import DONE


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(
    durations: Sequence[float], done: int, n_trials: int, elapsed: float, parallel: int
) -> str:
    """Where the sweep stands: trials finished of the target, time spent by this process, and
    an estimate of what remains (the finished trials' mean duration x the trials left, divided
    by the trials run at once)."""
    line = f"sweep: {done} of {n_trials} trials finished, {_duration(elapsed)} spent"
    left = max(0, n_trials - done)
    if durations and left:
        mean = sum(durations) / len(durations)
        eta = mean * math.ceil(left / max(1, parallel))
        line += (
            f"; about {_duration(eta)} left ({_duration(mean)} per trial over "
            f"{len(durations)} finished, {max(1, parallel)} at a time)"
        )
    return line


def finished_durations(study: optuna.Study) -> list[float]:
    return [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False, states=DONE)
        if t.datetime_start and t.datetime_complete and "duplicate_of" not in t.user_attrs
    ]

"""The ``scheduler`` group read into :class:`SchedulerSettings`, without torch (diffusers'
``get_scheduler`` builds it in ``trainer.optim.schedulers``)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainer.errors import ConfigError
from trainer.settings.read import value


class SchedulerSettings(BaseModel):
    """A validated scheduler group; ``warmup_steps`` as given (steps, or a fraction of the
    run resolved once its length is known)."""

    model_config = ConfigDict(frozen=True)

    name: str
    warmup_steps: int | float
    num_cycles: int
    power: float


def read_scheduler(sched_cfg: Any) -> SchedulerSettings:
    """Every problem of ``sched_cfg`` that does not depend on the run's length, or the settings."""
    if isinstance(sched_cfg, SchedulerSettings):
        return sched_cfg
    name, _, cycles, power = validate_schedule(sched_cfg, 1000)
    warmup = value(sched_cfg, "warmup_steps", 0)
    return SchedulerSettings(
        name=name, warmup_steps=0 if warmup is None else warmup, num_cycles=cycles, power=power
    )


SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


def resolve_warmup_steps(warmup: Any, num_training_steps: int) -> int:
    """Warmup in optimizer steps: an int, or a float in (0, 1) as a fraction of the run."""
    if warmup is None:
        return 0
    if isinstance(warmup, bool) or not isinstance(warmup, int | float) or math.isnan(warmup):
        raise ConfigError(
            f"scheduler.warmup_steps: {warmup!r} must be an int >= 0 or a fraction in (0, 1)"
        )
    if warmup < 0:
        raise ConfigError(f"scheduler.warmup_steps: {warmup} must be >= 0")
    if isinstance(warmup, float) and 0 < warmup < 1:
        return round(warmup * num_training_steps)
    if isinstance(warmup, float) and not warmup.is_integer():
        raise ConfigError(
            f"scheduler.warmup_steps: {warmup} must be a whole number of steps, or a fraction "
            "in (0, 1) of the training steps"
        )
    return int(warmup)


def validate_schedule(sched_cfg: Any, num_training_steps: int) -> tuple[str, int, int, float]:
    """(name, warmup steps, num_cycles, power); one ConfigError lists every problem."""
    problems: list[str] = []
    name = value(sched_cfg, "name", None)
    if name not in SCHEDULERS:
        problems.append(f"scheduler.name: {name!r} is not known; allowed: {', '.join(SCHEDULERS)}")
    steps_ok = isinstance(num_training_steps, int) and not isinstance(num_training_steps, bool)
    if not steps_ok or num_training_steps < 1:
        problems.append(f"num_training_steps: {num_training_steps!r} must be an int >= 1")
    warmup = 0
    try:
        total = num_training_steps if steps_ok else 1
        warmup = resolve_warmup_steps(value(sched_cfg, "warmup_steps", 0), total)
    except ConfigError as exc:
        problems.extend(exc.problems)
    cycles = value(sched_cfg, "num_cycles", 1)
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        problems.append(f"scheduler.num_cycles: {cycles!r} must be an int >= 1")
    power = value(sched_cfg, "power", 1.0)
    if isinstance(power, bool) or not isinstance(power, int | float) or not power > 0:
        problems.append(f"scheduler.power: {power!r} must be a number > 0")
    if problems:
        raise ConfigError(problems)
    return name, warmup, cycles, float(power)

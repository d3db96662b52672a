"""Learning-rate schedules from the ``scheduler`` config group, via diffusers' get_scheduler.

Adds what the guide knows on top of diffusers: warmup given as a fraction of the run, AdaFactor
with relative_step ignoring any schedule, and a warning when an adaptive optimizer (which wants
a constant LR) is given a decaying one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from trainer.errors import ConfigError
from trainer.optim.optimizers import (
    ADAFACTOR,
    OPTIMIZERS,
    canonical_name,
    cfg_get,
    is_adaptive,
    optimizer_args,
)

log = logging.getLogger(__name__)

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


def _validate(sched_cfg: Any, num_training_steps: int) -> tuple[str, int, int, float]:
    """(name, warmup steps, num_cycles, power); one ConfigError lists every problem."""
    problems: list[str] = []
    name = cfg_get(sched_cfg, "name")
    if name not in SCHEDULERS:
        problems.append(f"scheduler.name: {name!r} is not known; allowed: {', '.join(SCHEDULERS)}")
    steps_ok = isinstance(num_training_steps, int) and not isinstance(num_training_steps, bool)
    if not steps_ok or num_training_steps < 1:
        problems.append(f"num_training_steps: {num_training_steps!r} must be an int >= 1")
    warmup = 0
    try:
        total = num_training_steps if steps_ok else 1
        warmup = resolve_warmup_steps(cfg_get(sched_cfg, "warmup_steps", 0), total)
    except ConfigError as exc:
        problems.extend(exc.problems)
    cycles = cfg_get(sched_cfg, "num_cycles", 1)
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        problems.append(f"scheduler.num_cycles: {cycles!r} must be an int >= 1")
    power = cfg_get(sched_cfg, "power", 1.0)
    if isinstance(power, bool) or not isinstance(power, int | float) or not power > 0:
        problems.append(f"scheduler.power: {power!r} must be a number > 0")
    if problems:
        raise ConfigError(problems)
    return name, warmup, cycles, float(power)


def _warn_adaptive(name: str, opt_cfg: Any) -> None:
    """D-Adaptation and Prodigy estimate the step size themselves; the guide runs them with a
    constant schedule (Prodigy: or constant_with_warmup together with safeguard_warmup=True)."""
    opt_name = canonical_name(opt_cfg)
    if not OPTIMIZERS[opt_name].d_adaptive or name == "constant":
        return
    prodigy = opt_name == "Prodigy"
    safeguard = bool(optimizer_args(opt_cfg).get("safeguard_warmup"))
    if prodigy and safeguard and name == "constant_with_warmup":
        return
    log.warning(
        "scheduler.%s with adaptive %s: allowed, but the guide recommends constant%s",
        name,
        opt_name,
        " (or constant_with_warmup with optimizer.args.safeguard_warmup=true)" if prodigy else "",
    )


def build_scheduler(
    sched_cfg: Any, optimizer: torch.optim.Optimizer, num_training_steps: int, opt_cfg: Any
) -> LRScheduler:
    """The LR schedule over ``num_training_steps`` optimizer steps; call ``step()`` once per
    optimizer step. ``opt_cfg`` is the optimizer group the optimizer was built from."""
    name, warmup, cycles, power = _validate(sched_cfg, num_training_steps)
    opt_name = canonical_name(opt_cfg)
    if opt_name == ADAFACTOR and is_adaptive(opt_cfg):
        from transformers.optimization import AdafactorSchedule

        log.warning(
            "scheduler.%s is ignored: AdaFactor with relative_step=True sets its own learning "
            "rate",
            name,
        )
        # A proxy that only reports the LR Adafactor computes, so the loop stays the same.
        return AdafactorSchedule(optimizer)
    _warn_adaptive(name, opt_cfg)
    if name == "constant" and warmup > 0:
        log.warning(
            "scheduler.warmup_steps=%d is ignored by constant; use constant_with_warmup", warmup
        )
    if warmup > num_training_steps:
        log.warning(
            "scheduler.warmup_steps=%d exceeds the %d training steps: the LR never reaches its "
            "base value",
            warmup,
            num_training_steps,
        )
    from diffusers.optimization import get_scheduler  # heavy import, only when needed

    try:
        return get_scheduler(
            name,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=num_training_steps,
            num_cycles=cycles,
            power=power,
        )
    except ValueError as exc:  # e.g. polynomial: the base LR must exceed its end LR 1e-7
        raise ConfigError(f"scheduler.{name}: {exc}") from exc


def scheduler_config_problems(sched_cfg: Any) -> list[str]:
    """Every problem of ``sched_cfg`` that does not depend on the run's length."""
    try:
        _validate(sched_cfg, 1000)
    except ConfigError as exc:
        return list(exc.problems)
    return []

"""Learning-rate schedules from the ``scheduler`` config group, via diffusers' get_scheduler.

Adds what the guide knows on top of diffusers: warmup given as a fraction of the run, AdaFactor
with relative_step ignoring any schedule, and a warning when an adaptive optimizer (which wants
a constant LR) is given a decaying one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from trainer.errors import ConfigError
from trainer.settings.optimizer import ADAFACTOR, OptimizerSettings, read_optimizer
from trainer.settings.scheduler import (  # noqa: F401 (re-exported)
    SCHEDULERS,
    SchedulerSettings,
    read_scheduler,
    resolve_warmup_steps,
    validate_schedule,
)

log = logging.getLogger(__name__)


def _warn_adaptive(name: str, opt: OptimizerSettings) -> None:
    """D-Adaptation and Prodigy estimate the step size themselves; the guide runs them with a
    constant schedule (Prodigy: or constant_with_warmup together with safeguard_warmup=True)."""
    opt_name = opt.name
    if not opt.spec.d_adaptive or name == "constant":
        return
    prodigy = opt_name == "Prodigy"
    safeguard = bool(opt.args.get("safeguard_warmup"))
    if prodigy and safeguard and name == "constant_with_warmup":
        return
    log.warning(
        "scheduler.%s with adaptive %s: allowed, but the guide recommends constant%s",
        name,
        opt_name,
        " (or constant_with_warmup with optimizer.args.safeguard_warmup=true)" if prodigy else "",
    )


def build_scheduler(
    sched_cfg: Any, optimizer: torch.optim.Optimizer, num_training_steps: int, opt: Any
) -> LRScheduler:
    """The LR schedule over ``num_training_steps`` optimizer steps; call ``step()`` once per
    optimizer step. ``opt``: the optimizer settings (or group) the optimizer was built from."""
    name, warmup, cycles, power = validate_schedule(sched_cfg, num_training_steps)
    opt = read_optimizer(opt)
    if opt.name == ADAFACTOR and opt.adaptive:
        from transformers.optimization import AdafactorSchedule

        log.warning(
            "scheduler.%s is ignored: AdaFactor with relative_step=True sets its own learning "
            "rate",
            name,
        )
        # A proxy that only reports the LR Adafactor computes, so the loop stays the same.
        return AdafactorSchedule(optimizer)
    _warn_adaptive(name, opt)
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

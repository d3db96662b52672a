"""Optimizers and learning-rate schedules of the trainer, built from the optimizer and
scheduler config groups."""

from trainer.optim.optimizers import (
    OPTIMIZERS,
    build_optimizer,
    describe_optimizer,
    is_adaptive,
    lr_metrics,
)
from trainer.optim.schedulers import SCHEDULERS, build_scheduler

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "build_optimizer",
    "build_scheduler",
    "describe_optimizer",
    "is_adaptive",
    "lr_metrics",
]

"""Training callbacks of the task: logging, a divergence guard, per-epoch training loss, and
user-configured extras (``callbacks:`` in the config, built with Hydra's ``instantiate``)."""

from __future__ import annotations

import logging
import math

from hydra.utils import instantiate
from omegaconf import DictConfig

from trainer.errors import ConfigError, LorasweepError
from trainer.loop.callbacks import TrainingCallback

log = logging.getLogger("sweeper")

# Per-epoch metrics the training itself provides (no evaluation needed).
TRAINING_METRICS = ("train/epoch_loss",)


class TrainingDivergedError(LorasweepError):
    """The loss became NaN or infinite: these settings cannot train (learning rate too high?)."""


class LogMetrics(TrainingCallback):
    """Writes the training metrics of every step the loop reports to the run's log: every
    ``train.log_every_n_steps``-th step and the last one (the loop's cadence; no second one)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        log.info("step %d: %s", step, shown)

    def on_epoch_end(self, record) -> None:
        if record.path is not None:
            log.info("epoch %d saved to %s", record.epoch, record.path)


class NonFiniteLossGuard(TrainingCallback):
    """Ends a run whose loss is NaN/inf: every later step and evaluation would be wasted, and
    a sweep must record such a trial as failed with the reason, not as a (bad) score."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("train/loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDivergedError(
                f"non-finite training loss ({loss}) at step {step}: these settings diverge "
                "(learning rate too high?)"
            )


class EpochLoss(TrainingCallback):
    """``train/epoch_loss`` of each saved epoch in the run's scores: the loop's mean training
    loss over every micro-batch of the epoch (:class:`~trainer.loop.train.EpochRecord`), beside
    the evaluators' numbers so a sweep may optimise either. It does not depend on the logging
    cadence (``train.log_every_n_steps``)."""

    def on_epoch_end(self, record) -> None:
        if record.path is not None:
            record.scores.add(record.epoch, {"train/epoch_loss": record.loss})


def configured_callbacks(cfg: DictConfig) -> list[TrainingCallback]:
    """The extras under ``callbacks:`` (name -> ``{_target_: module.Class, ...}``), in order."""
    specs = cfg.get("callbacks") or {}
    built = []
    for name, spec in specs.items():
        callback = instantiate(spec)
        if not isinstance(callback, TrainingCallback):
            raise ConfigError(
                f"callbacks.{name}: {spec.get('_target_')} is not a "
                "trainer.loop.callbacks.TrainingCallback"
            )
        built.append(callback)
    return built

"""The small interface through which tracking and evaluation follow a training run."""

from __future__ import annotations

from pathlib import Path


class StopTraining(Exception):  # noqa: N818 - a control signal, not an error
    """Raised by a callback to end training after the current saved epoch (e.g. pruning).

    ``pruned``: the run was stopped as unpromising (an Optuna pruner), not because it reached
    what it wanted; callbacks then skip work meant for a kept run (the final strength grid).
    """

    def __init__(self, message: str = "", *, pruned: bool = False):
        super().__init__(message)
        self.pruned = pruned


class TrainingCallback:
    """Override what you need; every hook is optional.

    ``on_step`` gets the metrics of one optimizer step (``train/loss``, ``train/lr_unet``, ...).
    ``on_epoch_end`` gets every finished epoch's :class:`~trainer.loop.train.EpochRecord`
    (the loop's mean loss over all its micro-batches, the steps, the file if one was saved);
    every callback hears it before any hears ``on_epoch_saved``. ``on_epoch_saved`` gets the
    file written for a saved epoch; it may evaluate the file and raise :class:`StopTraining` to
    end the run there.
    """

    def on_train_start(self, info: dict) -> None:
        """Called once before the first step with the run's sizes (steps, epochs, images)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each optimizer step."""

    def on_epoch_end(self, record) -> None:
        """Called after every epoch with its :class:`~trainer.loop.train.EpochRecord`."""

    def on_epoch_saved(self, epoch: int, path: Path) -> None:
        """Called after an epoch's adapter file is written."""

    def on_train_end(self, result) -> None:
        """Called once at the end, with the :class:`~trainer.loop.train.TrainResult`."""

"""The small interface through which tracking and evaluation follow a training run, and the
one table of per-epoch numbers they share.

Per finished epoch the loop makes one :class:`~trainer.loop.train.EpochRecord` (epoch, step, the
loop's mean loss, the saved file, ``is_last``) and hands it to every callback in two rounds:

1. ``on_epoch_end(record)``: callbacks that measure the epoch (the loss tracker, the
   evaluation) add their numbers to ``record.scores``, the run's :class:`EpochScores`;
2. ``on_epoch_scored(record)``: callbacks that use the numbers (tracking, the pruning reporter)
   read them, complete, whatever the list's order. One may raise :class:`StopTraining`; the
   others still hear the epoch, then training stops.

When training ends the same two rounds run once more (``on_train_end`` then
``on_train_scored``, with the :class:`~trainer.loop.train.TrainResult`), for numbers added
late (the final file when the evaluation's cadence skipped it, the best epoch's strength grid).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence


class StopTraining(Exception):  # noqa: N818 - a control signal, not an error
    """Raised by a callback to end training after the current saved epoch (e.g. pruning).

    ``pruned``: the run was stopped as unpromising (an Optuna pruner), not because it reached
    what it wanted; callbacks then skip work meant for a kept run (the final strength grid).
    """

    def __init__(self, message: str = "", *, pruned: bool = False):
        super().__init__(message)
        self.pruned = pruned


def best_epoch(
    rows: Mapping[int, Mapping[str, float]],
    metrics: str | Sequence[str],
    direction: str = "maximize",
) -> tuple[int, float] | None:
    """(epoch, value) of the epoch with the best first metric of ``metrics`` among the epochs
    where every one of ``metrics`` is present and finite; the earliest among equals. None when
    no epoch qualifies. ``direction``: ``maximize`` or ``minimize``."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction: {direction!r}; allowed: 'maximize', 'minimize'")
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    finite = {
        epoch: row[names[0]]
        for epoch, row in rows.items()
        if all(math.isfinite(row.get(name, math.nan)) for name in names)
    }
    if not finite:
        return None
    pick = max if direction == "maximize" else min
    epoch = pick(sorted(finite), key=lambda e: finite[e])
    return epoch, finite[epoch]


class EpochScores:
    """epoch -> {metric: value}: every number measured for a run's epochs, whoever measured
    it. One table per run, shared by its callbacks through the records."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, float]] = {}

    def add(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Add (or update) ``metrics`` of ``epoch``; an empty mapping still marks the epoch."""
        self._rows.setdefault(int(epoch), {}).update(
            {name: float(value) for name, value in metrics.items()}
        )

    def get(self, epoch: int) -> dict[str, float]:
        """A copy of the epoch's numbers (empty when nothing measured it)."""
        return dict(self._rows.get(epoch, {}))

    def __contains__(self, epoch: object) -> bool:
        return epoch in self._rows

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> dict[int, dict[str, float]]:
        """A copy of the whole table, epochs in order."""
        return {epoch: dict(self._rows[epoch]) for epoch in sorted(self._rows)}

    def best(
        self, metrics: str | Sequence[str], direction: str = "maximize"
    ) -> tuple[int, float] | None:
        """:func:`best_epoch` of this table."""
        return best_epoch(self._rows, metrics, direction)


class TrainingCallback:
    """Override what you need; every hook is optional.

    ``on_step`` gets the metrics of one optimizer step (``train/loss``, ``train/lr_unet``, ...).
    Every finished epoch's :class:`~trainer.loop.train.EpochRecord` (its ``path`` set when the
    epoch's file was saved, ``is_last`` for the run's final epoch) comes first to every
    callback's ``on_epoch_end``, which adds what it measures to ``record.scores``, then to
    every callback's ``on_epoch_scored``, which may read all of the epoch's numbers and raise
    :class:`StopTraining`. ``on_train_end`` and ``on_train_scored`` are the same two rounds
    when training is over.
    """

    def on_train_start(self, info: dict) -> None:
        """Called once before the first step with the run's sizes (steps, epochs, images)."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each optimizer step."""

    def on_epoch_end(self, record) -> None:
        """Called after every epoch: add this callback's numbers to ``record.scores``."""

    def on_epoch_scored(self, record) -> None:
        """Called after every callback's ``on_epoch_end`` of the epoch: read the numbers."""

    def on_train_end(self, result) -> None:
        """Called once at the end: add late numbers to ``result.scores``."""

    def on_train_scored(self, result) -> None:
        """Called after every callback's ``on_train_end``: the run's numbers are final."""

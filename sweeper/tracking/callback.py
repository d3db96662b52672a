"""``MlflowCallback``: what a training run logs while it trains.

Per logged step: every metric the trainer reports (``train/loss``, ``train/lr_unet``,
``train/lr_te``, ``train/d`` for adaptive optimizers, ...) and ``train/loss_moving_avg``.
Per saved epoch, at ``step=epoch``: the epoch's numbers in the run's scores (the evaluation's
``eval/*``, the training's ``train/epoch_loss``), the evaluation's files (metrics JSON, image
grids) and the score tables so far (``scores/epoch_scores.csv`` / ``.json``), so a trial that is
pruned or fails keeps everything up to its stop. It reads the scores in ``on_epoch_scored``,
when every callback has added its numbers, and hears every epoch even when another callback
stops training there: its place in the callback list does not matter.
"""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from pathlib import Path

from sweeper.tracking.runs import Tracker
from trainer.loop.callbacks import TrainingCallback


def score_table_csv(rows: dict[int, dict[str, float]]) -> str:
    """One row per epoch, one column per metric (sorted), empty where an epoch lacks one."""
    columns = sorted({name for row in rows.values() for name in row})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *columns])
    for epoch in sorted(rows):
        row = rows[epoch]
        # repr: the exact float, so the table reproduces the logged numbers bit for bit.
        writer.writerow([epoch, *(repr(row[c]) if c in row else "" for c in columns)])
    return out.getvalue()


class MlflowCallback(TrainingCallback):
    """Logs a training run to ``tracker``'s MLflow run (nothing when tracking is off).

    ``evaluation``: the :class:`~evaluators.callback.EvaluationCallback`, whose
    ``files[epoch]`` are logged.
    """

    def __init__(self, tracker: Tracker, evaluation=None, window: int | None = None):
        self.tracker, self.evaluation = tracker, evaluation
        self.every = tracker.settings.log_every_n_steps
        window = window or tracker.settings.loss_moving_avg_window
        self._losses: deque[float] = deque(maxlen=window)
        self.rows: dict[int, dict[str, float]] = {}

    def on_train_start(self, info: dict) -> None:
        self.tracker.set_tags({f"plan.{k}": v for k, v in info.items()})

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if not self.tracker.active or step % self.every:
            return
        logged = dict(metrics)
        loss = metrics.get("train/loss")
        if loss is not None:
            self._losses.append(float(loss))
            logged["train/loss_moving_avg"] = sum(self._losses) / len(self._losses)
        self.tracker.log_metrics(logged, step)

    def _log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        before = self.rows.get(epoch) or {}
        # An epoch logged again (it got its strength grid when training ended) adds only what
        # is new or changed, so no metric has two points at one step.
        changed = {k: v for k, v in metrics.items() if before.get(k) != v}
        if not changed:
            return
        self.rows[epoch] = metrics
        self.tracker.log_metrics(changed, step=epoch, now=True)
        files = getattr(self.evaluation, "files", {}).get(epoch, {})
        root = getattr(self.evaluation, "output_dir", None)
        for path in files.values():
            self.tracker.log_artifact(path, _artifact_dir(Path(path), root))
        self.tracker.log_text(score_table_csv(self.rows), "scores/epoch_scores.csv")
        table = {str(e): row for e, row in sorted(self.rows.items())}
        self.tracker.log_text(json.dumps(table, indent=1), "scores/epoch_scores.json")

    def on_epoch_scored(self, record) -> None:
        if self.tracker.active and record.path is not None:
            self._log_epoch(record.epoch, record.scores.get(record.epoch))

    def on_train_scored(self, result) -> None:
        if not self.tracker.active:
            return
        # Numbers added when training ended (the final file when the cadence skipped it, the
        # best epoch's strength grid).
        for epoch, metrics in result.scores.rows().items():
            self._log_epoch(epoch, metrics)
        tags = {"train.global_step": result.global_step, "train.epochs_done": result.epochs_done}
        if result.stopped_early:
            tags["lorasweep.stop_reason"] = result.stopped_early
        self.tracker.set_tags(tags)
        self.tracker.flush()


def _artifact_dir(path: Path, root: Path | None) -> str:
    """``eval/<folder of the file relative to the evaluation's output folder>``."""
    if root is not None:
        try:
            parent = path.parent.relative_to(root)
            return "eval" if str(parent) == "." else f"eval/{parent.as_posix()}"
        except ValueError:
            pass
    return "eval"

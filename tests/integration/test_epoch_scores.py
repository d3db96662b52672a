"""One table of per-epoch numbers per run: whatever the order of the callback list, every
callback that reads the scores sees the same numbers and the run picks the same best epoch."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from sweeper.callbacks import EpochLoss
from sweeper.search_config import SearchSettings
from sweeper.tracking.callback import MlflowCallback
from sweeper.trial import OptunaReporter
from trainer.loop.callbacks import EpochScores, StopTraining, TrainingCallback, best_epoch
from trainer.run import train_from_config

OBJECTIVE = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.1}


class FakeEvaluation(TrainingCallback):
    """Measures saved epochs in on_epoch_end; adds a grid number to the best one at the end."""

    def __init__(self):
        self.seen_loss: dict[int, float] = {}

    def on_epoch_end(self, record):
        if record.path is not None:
            record.scores.add(record.epoch, {"eval/objective": OBJECTIVE[record.epoch]})

    def on_train_end(self, result):
        best = result.scores.best("eval/objective")
        result.scores.add(best[0], {"eval/best_strength": 0.75})


class StopAtThree(TrainingCallback):
    def on_epoch_scored(self, record):
        if record.epoch == 3:
            raise StopTraining("stopped at epoch 3")


class FakeTracker:
    """What MlflowCallback uses of a Tracker; records the epoch metrics it logs."""

    active = True
    settings = SimpleNamespace(log_every_n_steps=1, loss_moving_avg_window=4)

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step, now=False):
        if now:  # the per-epoch metrics (step = epoch)
            self.logged.append((step, dict(metrics)))

    def set_tags(self, tags):
        pass

    def log_text(self, text, name):
        pass

    def log_artifact(self, path, folder):
        pass

    def flush(self):
        pass


def _settings() -> SearchSettings:
    return SearchSettings(
        sampler="random", sampler_seed=0, sampler_args={}, pruner="none", pruner_args={},
        directions=("maximize",), metrics=("eval/objective",), n_trials=1, n_jobs=None,
        storage=None, study_name=None, max_failure_rate=0.5, heartbeat_interval=None,
        grace_period=None, max_retry=None,
    )  # fmt: skip


def _run(cfg, order: list[int]):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    tracker, reporter = FakeTracker(), OptunaReporter(study.ask(), _settings())
    callbacks = [EpochLoss(), FakeEvaluation(), StopAtThree(), MlflowCallback(tracker), reporter]
    result = train_from_config(cfg, callbacks=[callbacks[i] for i in order])
    return result, tracker, reporter


def test_scores_and_best_epoch_do_not_depend_on_the_callback_order(compose):
    cfg = compose("train.max_train_epochs=4", "train.batch_size=4", "train.save_every_n_epochs=1")
    # As listed; reversed; the stopper first and the readers before the measurers.
    orders = [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4, 3, 1, 0]]
    runs = [_run(cfg, order) for order in orders]
    first, tracker, reporter = runs[0]
    rows = first.scores.rows()
    assert sorted(rows) == [1, 2, 3] and first.stopped_early == "stopped at epoch 3"
    assert {e: r["eval/objective"] for e, r in rows.items()} == {1: 0.2, 2: 0.9, 3: 0.5}
    assert rows[2]["eval/best_strength"] == 0.75 and "train/epoch_loss" in rows[3]
    assert reporter.outcome()["best_epoch"] == 2 and reporter.outcome()["values"] == [0.9]
    logged: dict[int, dict] = {}
    for epoch, metrics in tracker.logged:
        logged.setdefault(epoch, {}).update(metrics)
    assert logged == rows  # every epoch, the late grid number included
    for result, other_tracker, other_reporter in runs[1:]:
        assert result.scores.rows() == rows
        assert result.stopped_early == first.stopped_early
        assert other_reporter.outcome() == reporter.outcome()
        assert other_reporter.history == reporter.history
        assert other_tracker.logged == tracker.logged


def test_best_epoch_takes_finite_values_and_the_earliest_among_equals():
    rows = {1: {"m": 0.5, "n": 1.0}, 2: {"m": 0.7, "n": float("nan")}, 3: {"m": 0.5, "n": 2.0}}
    assert best_epoch(rows, "m") == (2, 0.7)
    assert best_epoch(rows, ["m", "n"]) == (1, 0.5)  # epoch 2 lacks a finite n
    assert best_epoch(rows, "m", "minimize") == (1, 0.5)
    assert best_epoch(rows, "absent") is None
    with pytest.raises(ValueError, match="direction: 'max'; allowed"):
        best_epoch(rows, "m", "max")
    scores = EpochScores()
    scores.add(2, {"m": 1})
    scores.add(2, {"n": 3.0})
    scores.add(1, {})
    assert list(scores) == [1, 2] and scores.get(2) == {"m": 1.0, "n": 3.0}
    assert scores.best("m") == (2, 1.0) and scores.get(5) == {}

"""The trial side without training: per-epoch reporting, pruning, best epoch, failures."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from sweeper.callbacks import EpochLoss, NonFiniteLossGuard, TrainingDivergedError
from sweeper.results import reproduce_command
from sweeper.search_config import SearchSettings
from sweeper.trial import MetricNotFoundError, NoObjectiveError, OptunaReporter
from trainer.loop.callbacks import EpochScores, StopTraining
from trainer.loop.train import EpochRecord, TrainResult


def settings(metrics=("eval/objective",), directions=("minimize",)) -> SearchSettings:
    return SearchSettings(
        sampler="random", sampler_seed=0, sampler_args={}, pruner="median", pruner_args={},
        directions=tuple(directions), metrics=tuple(metrics), n_trials=4, n_jobs=None,
        storage=None, study_name=None, max_failure_rate=0.5, heartbeat_interval=None,
        grace_period=None, max_retry=None,
    )  # fmt: skip


def saved(epoch: int, scores: EpochScores, last: bool = False) -> EpochRecord:
    """The loop's record of a saved epoch."""
    return EpochRecord(epoch, 4 * epoch, 1.0, 8, 4, Path(f"e{epoch}.safetensors"), last, scores)


def feed(reporter, epochs: dict[int, dict]) -> EpochScores:
    scores = EpochScores()
    for epoch, metrics in epochs.items():
        scores.add(epoch, metrics)
        reporter.on_epoch_scored(saved(epoch, scores, last=epoch == max(epochs)))
    return scores


@pytest.mark.parametrize(
    "pruner",
    [
        optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    ],
)
def test_value_is_the_best_epoch_and_a_hopeless_trial_is_pruned_early(pruner):
    study = optuna.create_study(direction="minimize", pruner=pruner)
    good = study.ask()
    reporter = OptunaReporter(good, settings())
    feed(reporter, {1: {"eval/objective": 1.0}, 2: {"eval/objective": 0.8},
                            3: {"eval/objective": 0.9}})  # fmt: skip
    outcome = reporter.outcome()
    assert outcome == {"state": "COMPLETE", "values": [0.8], "best_epoch": 2,
                       "pruned_at_epoch": None}  # fmt: skip
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 0.8, 3: 0.9}
    assert good.user_attrs["epoch_metrics"]["2"] == {"eval/objective": 0.8}
    study.tell(good, outcome["values"])

    hopeless = study.ask()
    reporter = OptunaReporter(hopeless, settings())
    scores = EpochScores()
    scores.add(1, {"eval/objective": 5.0})
    with pytest.raises(StopTraining, match="pruned at epoch 1"):
        reporter.on_epoch_scored(saved(1, scores))
    assert reporter.outcome()["state"] == "PRUNED"
    assert reporter.outcome()["pruned_at_epoch"] == 1


def test_the_last_epoch_is_never_pruned():
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    first = study.ask()
    first.report(0.1, 1)
    study.tell(first, 0.1)
    reporter = OptunaReporter(study.ask(), settings())
    feed(reporter, {1: {"eval/objective": 9.0}})  # worse, but training is over
    assert reporter.outcome()["state"] == "COMPLETE"


def test_skipped_epochs_are_not_reported_but_a_misnamed_metric_fails():
    study = optuna.create_study()
    reporter = OptunaReporter(study.ask(), settings())
    result = TrainResult()
    result.scores.add(1, {"train/epoch_loss": 1.0})  # eval.every_n_epochs skipped epoch 1
    reporter.on_epoch_scored(saved(1, result.scores))
    assert reporter.history == {}
    # The evaluation catches up on a skipped last file when training ends: it still counts.
    result.scores.add(1, {"eval/objective": 0.5})
    reporter.on_train_scored(result)
    assert reporter.history == {1: {"eval/objective": 0.5}}
    assert reporter.outcome()["best_epoch"] == 1
    result.scores.add(2, {"train/epoch_loss": 0.9, "eval/clip_i": 0.3})
    with pytest.raises(MetricNotFoundError, match=r"\['eval/objective'\].*eval/clip_i"):
        reporter.on_epoch_scored(saved(2, result.scores))


def test_multi_objective_takes_the_values_of_one_epoch_and_reports_nothing():
    study = optuna.create_study(directions=["maximize", "maximize"])
    trial = study.ask()
    metrics = ("eval/clip_i", "eval/clip_t")
    reporter = OptunaReporter(trial, settings(metrics, ("maximize", "maximize")))
    feed(reporter, {1: {"eval/clip_i": 0.5, "eval/clip_t": 0.9},
                            2: {"eval/clip_i": 0.7, "eval/clip_t": 0.2}})  # fmt: skip
    assert reporter.outcome()["values"] == [0.7, 0.2]  # both from epoch 2, a real file
    assert reporter.outcome()["best_epoch"] == 2
    assert study.trials[0].intermediate_values == {}


def test_no_finite_objective_is_an_error():
    study = optuna.create_study()
    reporter = OptunaReporter(study.ask(), settings())
    feed(reporter, {1: {"eval/objective": math.nan}})
    with pytest.raises(NoObjectiveError, match="no evaluated epoch gave finite"):
        reporter.outcome()


def test_training_callbacks_guard_nan_and_average_epoch_loss():
    guard = NonFiniteLossGuard()
    guard.on_step(1, {"train/loss": 0.5})
    with pytest.raises(TrainingDivergedError, match=r"non-finite training loss \(nan\) at step 2"):
        guard.on_step(2, {"train/loss": math.nan})
    # The epoch loss is the loop's (EpochRecord.loss, the mean over every micro-batch), not
    # the logged steps'; epochs that were not saved give no result.
    losses, scores = EpochLoss(), EpochScores()
    losses.on_step(1, {"train/loss": 9.0, "train/epoch": 1.0})  # a logged step: not used
    for epoch, loss, path in [(1, 2.0, Path("e1")), (2, 0.7, None), (3, 0.5, Path("e3"))]:
        losses.on_epoch_end(EpochRecord(epoch, 4 * epoch, loss, 8, 4, path, epoch == 3, scores))
    assert scores.rows() == {1: {"train/epoch_loss": 2.0}, 3: {"train/epoch_loss": 0.5}}


def test_reproduce_command_keeps_the_experiment_and_drops_the_sweep():
    fixed = ["+category=F", "optimizer=prodigy", "search.n_trials=4", "hydra/launcher=joblib",
             "hydra.sweep.dir=/tmp/x", "data.dir=/data/my cat"]  # fmt: skip
    command = reproduce_command(fixed, ["network.dim=96", "network.alpha=12"])
    assert command.split(" -m sweeper ")[1] == (
        "+category=F optimizer=prodigy 'data.dir=/data/my cat' network.dim=96 network.alpha=12"
    )


def test_reproduce_command_keeps_the_objective_and_drops_only_the_sweeps_steering():
    """A reproduced run picks its best epoch by the trial's objective: search=pareto and
    search.metrics / search.directions stay; sampler, pruner, counts and storage go."""
    fixed = ["search=pareto", "search.metrics=[eval/clip_i,eval/clip_t]",
             "search.directions=[maximize,maximize]", "search.sampler.name=random",
             "search.pruner.name=none", "search.n_trials=8", "search.n_jobs=2",
             "search.storage=sqlite:///x.db", "search.study_name=s", "search.heartbeat.interval=5",
             "search.max_failure_rate=0.9", "+search.params.network.dim.high=64",
             "optuna.x=1"]  # fmt: skip
    command = reproduce_command(fixed, ["network.dim=96"])
    assert command.split(" -m sweeper ")[1] == (
        "search=pareto 'search.metrics=[eval/clip_i,eval/clip_t]' "
        "'search.directions=[maximize,maximize]' network.dim=96"
    )


def test_reproduce_command_names_the_projects_interpreter_not_this_machines(monkeypatch):
    from sweeper import results

    monkeypatch.setattr(results.sys, "prefix", str(results.PROJECT_DIR / ".venv"))
    assert reproduce_command([], ["a=1"]) == ".venv/bin/python -m sweeper a=1"
    monkeypatch.setattr(results.sys, "prefix", "/usr")
    assert reproduce_command([], ["a=1"]) == "python -m sweeper a=1"


def test_the_end_of_a_sweep_names_the_grid_target_and_the_report_and_dashboard(tmp_path, capsys):
    import optuna

    from sweeper.results import print_summary, summarize

    study = optuna.create_study(study_name="grid-study")
    summary = summarize(study, [], 20, "sqlite:///x.db", grid_size=12)
    assert summary["target"] == 12 and summary["n_trials"] == 20
    assert summarize(study, [], 20, "sqlite:///x.db")["target"] == 20
    assert summarize(study, [], 4, "sqlite:///x.db", grid_size=12)["target"] == 4
    print_summary(summary, tmp_path / "r.yaml", "postgresql://u:***@h/db")
    out = capsys.readouterr().out
    assert "target 12, a grid of 12 points" in out
    assert "-m sweeper.report --study grid-study --storage 'postgresql://u:***@h/db'" in out
    assert "Dashboard (MLflow): make ui" in out
    print_summary(summarize(study, [], 5, "sqlite:///x.db"), tmp_path / "r.yaml")
    assert "-m sweeper.report --study grid-study\n" in capsys.readouterr().out


def test_multirun_flag_may_follow_the_overrides():
    from sweeper.__main__ import multirun_flag_first

    argv = ["sweeper", "+category=F", "optimizer=prodigy", "-m", "search.n_trials=4"]
    assert multirun_flag_first(argv) == [
        "sweeper", "-m", "+category=F", "optimizer=prodigy", "search.n_trials=4"
    ]  # fmt: skip
    assert multirun_flag_first(["sweeper", "a=1"]) == ["sweeper", "a=1"]

"""A proposal that repeats a finished trial's parameters reuses its result (nothing trains)."""

from __future__ import annotations

import optuna

from sweeper.sweep_loop import SweepRunner
from sweeper.tracking import Tracker


def _runner() -> SweepRunner:
    runner = object.__new__(SweepRunner)  # only the tracker is used
    runner.tracker = Tracker()
    return runner


def test_a_repeated_proposal_takes_the_finished_trials_result():
    study = optuna.create_study(direction="minimize")
    first = study.ask()
    first.suggest_categorical("network.dim", [4, 8])
    first.set_user_attr("best_epoch", 3)
    study.tell(first, 0.25)
    runner = _runner()

    study.enqueue_trial({"network.dim": first.params["network.dim"]})
    again = study.ask()
    again.suggest_categorical("network.dim", [4, 8])
    assert runner._reuse_duplicate(study, again) is True
    frozen = study.trials[again.number]
    assert frozen.state.name == "COMPLETE" and frozen.values == [0.25]
    assert frozen.user_attrs["duplicate_of"] == 0 and frozen.user_attrs["best_epoch"] == 3

    other = 8 if first.params["network.dim"] == 4 else 4
    study.enqueue_trial({"network.dim": other})
    new = study.ask()
    new.suggest_categorical("network.dim", [4, 8])
    assert runner._reuse_duplicate(study, new) is False
    assert study.trials[new.number].state.name == "RUNNING"


def test_a_pruned_configuration_stays_pruned_and_failed_ones_are_tried_again():
    study = optuna.create_study()
    pruned = study.ask()
    pruned.suggest_int("network.dim", 4, 4)
    pruned.set_user_attr("pruned_at_epoch", 1)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    failed = study.ask()
    failed.suggest_int("network.dim", 8, 8)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    runner = _runner()

    repeat = study.ask()
    repeat.suggest_int("network.dim", 4, 4)
    assert runner._reuse_duplicate(study, repeat)
    assert study.trials[repeat.number].state.name == "PRUNED"
    assert study.trials[repeat.number].user_attrs["pruned_at_epoch"] == 1
    retry = study.ask()
    retry.suggest_int("network.dim", 8, 8)
    assert not runner._reuse_duplicate(study, retry)  # a failure is not a result


def test_progress_line_says_where_the_sweep_stands_and_what_remains():
    from sweeper.progress import progress_line

    assert progress_line([], 0, 20, 3.2, 1) == "sweep: 0 of 20 trials finished, 3s spent"
    line = progress_line([60.0, 120.0], 2, 6, 185.0, 2)
    # 4 trials left, 2 at a time, 90 s each: two rounds = 3 minutes.
    assert line == (
        "sweep: 2 of 6 trials finished, 3m05s spent; about 3m00s left "
        "(1m30s per trial over 2 finished, 2 at a time)"
    )
    assert progress_line([4000.0], 1, 3, 4000.0, 1).endswith(
        "about 2h13m left (1h06m per trial over 1 finished, 1 at a time)"
    )

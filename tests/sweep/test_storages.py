"""The two storage kinds behave the same: an RDB (SQLite here) and Optuna's journal file get
the same heartbeat, stale-trial failure and retry, and the report reads both."""

from __future__ import annotations

import time

import optuna
import pytest

from sweeper.report.locate import ReportInputError, open_storage
from sweeper.search_config import SearchSettings
from sweeper.storage import make_storage, storage_problem

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SETTINGS = SearchSettings(
    sampler="random",
    sampler_seed=0,
    sampler_args={},
    pruner="none",
    pruner_args={},
    directions=("minimize",),
    metrics=("train/epoch_loss",),
    n_trials=4,
    n_jobs=None,
    storage=None,
    study_name=None,
    max_failure_rate=0.5,
    heartbeat_interval=1,
    grace_period=2,
    max_retry=1,
)


def _url(kind: str, tmp_path) -> str:
    if kind == "journal":
        return f"journal://{tmp_path / 'optuna.journal'}"
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _states(study: optuna.Study) -> list[tuple[int, str]]:
    return [(t.number, t.state.name) for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_silent_trial_fails_after_the_grace_period_and_is_retried_max_retry_times(
    kind, tmp_path
):
    storage = make_storage(_url(kind, tmp_path), SETTINGS)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.suggest_int("x", 0, 100)
    storage.record_heartbeat(trial._trial_id)
    silent = study.ask()  # never beats: not judged (Optuna's RDB rule, kept on the journal)
    optuna.storages.fail_stale_trials(study)
    assert _states(study) == [(0, "RUNNING"), (1, "RUNNING")]  # within the grace period

    time.sleep(3.2)  # > grace + 1: SQLite stores the beat to the second
    optuna.storages.fail_stale_trials(study)
    assert _states(study) == [(0, "FAIL"), (1, "RUNNING"), (2, "WAITING")]
    retry = study.ask()  # the queued copy: same parameters, marked as a retry of trial 0
    assert retry.number == 2 and retry.params == trial.params
    assert study.trials[2].system_attrs["failed_trial"] == 0
    # The copy carries the dead trial's system attributes; on the journal that includes its
    # last beat, which must not make the copy stale the moment it is taken.
    optuna.storages.fail_stale_trials(study)
    assert study.trials[2].state.name == "RUNNING"

    storage.record_heartbeat(retry._trial_id)
    time.sleep(3.2)  # > grace + 1: SQLite stores the beat to the second
    optuna.storages.fail_stale_trials(study)  # stale again: max_retry=1 queues no third run
    assert _states(study) == [(0, "FAIL"), (1, "RUNNING"), (2, "FAIL")]
    assert silent.number == 1


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_beating_trial_is_never_failed_and_a_finished_one_takes_no_beat(kind, tmp_path):
    storage = make_storage(_url(kind, tmp_path), SETTINGS)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    for _ in range(4):
        storage.record_heartbeat(trial._trial_id)
        time.sleep(0.8)
        optuna.storages.fail_stale_trials(study)
    assert _states(study) == [(0, "RUNNING")]
    study.tell(trial, 1.0)
    storage.record_heartbeat(trial._trial_id)  # a late beat of a batch: harmless
    assert _states(study) == [(0, "COMPLETE")]


def test_journal_urls_are_checked_naming_what_is_allowed(tmp_path):
    assert storage_problem(f"journal://{tmp_path / 'j.journal'}") is None
    assert not (tmp_path / "j.journal").exists()  # checking creates nothing
    relative = storage_problem("journal://shared/optuna.journal")
    assert "needs an absolute path" in relative and "journal:///shared/" in relative
    missing = storage_problem(f"journal://{tmp_path / 'no' / 'x.journal'}")
    assert f"the folder {tmp_path / 'no'} does not exist" in missing
    assert "journal:///abs/path/optuna.journal" in storage_problem("notaurl")


def test_the_report_opens_a_journal_and_refuses_a_missing_one(tmp_path):
    url = _url("journal", tmp_path)
    with pytest.raises(ReportInputError, match="no such file"):
        open_storage(url)
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    study.tell(study.ask(), 1.0)
    trials = open_storage(url).get_all_trials(0)
    assert [(t.number, t.value) for t in trials] == [(0, 1.0)]

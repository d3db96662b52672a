"""Sweeps that survive: a killed sweep resumes, several workers share one study, trials run in
parallel processes (joblib launcher)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest
from mlflow import MlflowClient
from sweep_helpers import (
    PROJECT_DIR,
    assert_shared_without_duplicates,
    command,
    default_storage,
    make_dataset,
    results,
    run_sweep,
    run_two_workers,
    sweep_env,
    tiny_overrides,
    trials_of,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data")
    return make_dataset(root), root / "cache"


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240):
    """Poll ``predicate()`` until it returns something truthy (the sweep must stay alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, "the sweep ended before the awaited moment"
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_killed_sweep_resumes_keeping_completed_trials_and_retrying_the_killed_one(
    shared, tmp_path, storage
):
    data_dir, cache = shared
    sweep_dir, env = tmp_path / "sweep", sweep_env(tmp_path, cache)
    env["LORASWEEP_MLRUNS_DIR"] = str(tmp_path / "mlruns")
    # The embedded SQLite file, or Optuna's journal file: the same heartbeat and retry.
    store = tmp_path / "optuna.journal" if storage == "journal" else None
    url = f"journal://{store}" if store else default_storage(tmp_path)
    store = store or tmp_path / "runs" / "lorasweep_optuna.db"
    args = [
        *([f"search.storage='{url}'"] if storage == "journal" else []),
        *tiny_overrides(data_dir, sweep_dir, epochs=1),
        "search.sampler.name=random",
        "search.sampler.seed=0",
        "search.pruner.name=none",
        "search.n_trials=2",
        # Trial 1 takes seconds, so it is still running when the test kills the sweep (its
        # retry has another number and runs at full speed).
        "+callbacks.slow._target_=sweep_faults.SlowTrial",
        "+callbacks.slow.trial_number=${optuna.trial_number}",
        "+callbacks.slow.slow_trial=1",
        "+callbacks.slow.seconds=4",
    ]
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(
            command(*args), cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

        def second_trial_running():
            if not store.exists():
                return None
            trials = trials_of(url)
            states = [t.state for t in trials]
            if states[:2] != [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]:
                return None
            # ... and its MLflow run is open (the kill must leave it RUNNING).
            client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns'}/mlflow.db")
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            opened = any(r.data.tags.get("optuna.trial_number") == "1" for r in runs)
            return trials if opened else None

        before = wait_for(second_trial_running, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(3)  # past the 2 s grace period: the killed trial's heartbeat is stale
    rerun = run_sweep(args, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    trials = trials_of(url)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and len(trials) == 3
    # The completed trial is kept as it was; the killed one failed and was queued again.
    assert (trials[0].state.name, trials[0].values) == ("COMPLETE", before[0].values)
    assert trials[0].datetime_complete == before[0].datetime_complete
    assert trials[1].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == trials[1].params
    summary = {t["number"]: t for t in results(sweep_dir)["trials"]}
    assert summary[1]["fail_reason"] == "the process running it stopped (no heartbeat)"
    assert summary[retries[0].number]["retry_of"] == 1
    # The rerun launched its job (Hydra's launcher lines are in the sweep's log, not printed).
    assert "Launching 1 jobs" not in rerun.stdout + rerun.stderr
    assert "Launching 1 jobs" in (sweep_dir / "sweep.log").read_text()
    # The killed trial's MLflow run was left RUNNING by the dead process; the rerun ended it
    # with the trial's state and set the sweep's best tags again.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns'}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}
    killed = [r for r in runs if r.data.tags.get("optuna.trial_number") == "1"]
    assert [(r.info.status, r.data.tags["optuna.trial_state"]) for r in killed] == [
        ("FAILED", "FAIL")
    ]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -t.values[0])
    assert parent.data.tags["best.trial"] == str(best.number)


def test_two_workers_share_one_study_and_run_no_trial_twice(shared, tmp_path):
    data_dir, cache = shared
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=1),
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=4",
    ]
    texts = run_two_workers(args, sweep_env(tmp_path, cache), tmp_path)
    assert_shared_without_duplicates(trials_of(default_storage(tmp_path)), texts, 4)


def test_joblib_launcher_runs_trials_in_parallel_processes(shared, tmp_path):
    data_dir, cache = shared
    sweep_dir = tmp_path / "sweep"
    args = [
        *tiny_overrides(data_dir, sweep_dir, epochs=1),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=2",
    ]
    proc = run_sweep(args, sweep_env(tmp_path, cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The launcher's own lines are in the sweep's log, not on the terminal.
    assert "Joblib.Parallel(n_jobs=2" in (sweep_dir / "sweep.log").read_text()
    assert "Joblib.Parallel" not in proc.stdout + proc.stderr
    trials = trials_of(default_storage(tmp_path))
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    sweeper = {t.user_attrs["sweeper"] for t in trials}
    workers = {t.user_attrs["job_worker"] for t in trials}
    assert len(sweeper) == 1 and not workers & sweeper  # trained outside the sweeper process
    assert {p.name for p in sweep_dir.glob("trial_*")} == {"trial_0", "trial_1"}

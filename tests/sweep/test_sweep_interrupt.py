"""A sweep stopped by SIGTERM (or Ctrl-C) ends cleanly and resumes; a rerun proposes new
parameters and refuses changed data. (A SIGKILLed sweep's MLflow runs: test_sweep_resilience.)"""

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
    command,
    default_storage,
    make_dataset,
    results,
    run_sweep,
    sweep_env,
    tiny_overrides,
    trials_of,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt_data")
    return make_dataset(root), root / "cache"


def _env(tmp_path, cache):
    return {**sweep_env(tmp_path, cache), "LORASWEEP_MLRUNS_DIR": str(tmp_path / "mlruns")}


def _client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlruns'}/mlflow.db")


def _runs(tmp_path):
    client = _client(tmp_path)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


def _wait_for_running_trial(url: str, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = trials_of(url) if os.path.exists(url.removeprefix("sqlite:///")) else []
        if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            return trials
        assert proc.poll() is None, "the sweep ended before a trial ran"
        time.sleep(0.2)
    raise AssertionError("timed out waiting for a running trial")


def _wait_for_trial_run(tmp_path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the trial's MLflow run exists and has logged a training step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (tmp_path / "mlruns" / "mlflow.db").exists():
            children = [r for r in _runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
            if children and "train/loss" in children[0].data.metrics:
                return
        assert proc.poll() is None, "the sweep ended before its trial trained"
        time.sleep(0.3)
    raise AssertionError("timed out waiting for the trial's run")


def test_sigterm_fails_and_requeues_the_running_trial_then_a_rerun_resumes(shared, tmp_path):
    data_dir, cache = shared
    env, url = _env(tmp_path, cache), default_storage(tmp_path)
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=3),
        "search.sampler.name=random",
        "search.sampler.seed=0",
        "search.pruner.name=none",
        "search.n_trials=2",
        # Trial 0 takes seconds, so the signal reaches it while it trains (a tiny trial is
        # over in about a second; its retry has another number and runs at full speed).
        "+callbacks.slow._target_=sweep_faults.SlowTrial",
        "+callbacks.slow.trial_number=${optuna.trial_number}",
        "+callbacks.slow.slow_trial=0",
        "+callbacks.slow.seconds=1",
    ]
    proc = subprocess.Popen(
        command(*args), cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_running_trial(url, proc)
    _wait_for_trial_run(tmp_path, proc)  # inside training
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM): the running trials were marked failed"), last
    assert "run the same command to resume the study" in last

    trials = trials_of(url)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and not [t for t in trials if t.state.name == "RUNNING"]
    assert failed[0].user_attrs["fail_reason"].startswith("interrupted by SIGTERM")
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == failed[0].params
    # MLflow: the trial's run and the sweep's run ended as KILLED, nothing left RUNNING.
    runs = _runs(tmp_path)
    assert runs and {r.info.status for r in runs} == {"KILLED"}
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert child.data.tags["optuna.trial_state"] == "FAIL"
    # The results file was written on the way out, with the failed trial and its reason.
    summary = {t["number"]: t for t in results(tmp_path / "sweep")["trials"]}
    assert summary[failed[0].number]["fail_reason"].startswith("interrupted by SIGTERM")

    rerun = run_sweep(args, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = trials_of(url)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    requeued = [t for t in complete if t.user_attrs.get("requeued_from") == failed[0].number]
    assert len(requeued) == 1 and requeued[0].params == failed[0].params
    summary = {t["number"]: t for t in results(tmp_path / "sweep")["trials"]}
    assert summary[requeued[0].number]["retry_of"] == failed[0].number
    statuses = {r.info.run_id: r.info.status for r in _runs(tmp_path)}
    assert "RUNNING" not in statuses.values()


def test_a_rerun_to_add_trials_proposes_new_parameters_and_changed_data_is_refused(
    shared, tmp_path
):
    data_dir, cache = shared
    env, url = _env(tmp_path, cache), default_storage(tmp_path)
    base = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=1),
        "tracking.enabled=false",
        "search.sampler.name=random",
        "search.sampler.seed=0",
        "search.pruner.name=none",
        "search.study_name=resume",
    ]
    first = run_sweep([*base, "search.n_trials=1"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    earlier = {t.number: t.params for t in trials_of(url)}
    second = run_sweep([*base, "search.n_trials=2"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = trials_of(url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert trials[0].params == earlier[0]  # kept as it was
    # Seed 0 again would propose trial 0's parameters: the rerun's are new.
    assert trials[1].params != earlier[0]
    assert "sampler seed 1" in second.stdout + second.stderr

    extra = data_dir / "1_cat" / "extra.png"
    extra.write_bytes((data_dir / "1_cat" / "chelsea.png").read_bytes())
    try:
        changed = run_sweep([*base, "search.n_trials=3"], env)
    finally:
        extra.unlink()
    assert changed.returncode == 2
    assert "data.dir: the data changed since study 'resume' began" in changed.stderr
    assert "search.study_name=" in changed.stderr
    assert len(trials_of(url)) == 2  # nothing was started

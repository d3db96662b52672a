"""Trials as Slurm jobs (Hydra's submitit launcher) on a real single-node Slurm cluster
(``conftest.slurm``): a sweep is killed while a trial runs in Slurm, and the rerun of the same
command resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest
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


def test_a_sweep_of_slurm_jobs_is_killed_and_its_rerun_resumes(slurm, tmp_path):
    data_dir = make_dataset(tmp_path)
    sweep_dir = tmp_path / "sweep"
    env = {**sweep_env(tmp_path, tmp_path / "cache"), "SLURM_CONF": slurm["SLURM_CONF"]}
    env["LORASWEEP_MLRUNS_DIR"] = str(tmp_path / "mlruns")
    url = default_storage(tmp_path)
    args = [
        *tiny_overrides(data_dir, sweep_dir, epochs=1),
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "search.sampler.name=random",
        "search.sampler.seed=0",
        "search.pruner.name=none",
        "search.n_trials=3",
        # Trial 1 takes seconds, so it is still running in Slurm when the sweep is killed.
        "+callbacks.slow._target_=sweep_faults.SlowTrial",
        "+callbacks.slow.trial_number=${optuna.trial_number}",
        "+callbacks.slow.slow_trial=1",
        "+callbacks.slow.seconds=4",
    ]
    started = time.monotonic()
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(
            command(*args), cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "trial 1 never ran in Slurm"
            trials = trials_of(url) if (tmp_path / "runs" / "lorasweep_optuna.db").exists() else []
            states = [t.state for t in trials]
            complete, running = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
            if states[:2] == [complete, running] and "slurm_job_id" in trials[1].user_attrs:
                break
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweeper dies; its Slurm job does not
        proc.wait()
    orphan = trials[1].user_attrs["slurm_job_id"]
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
    assert orphan in queue.stdout.split()
    subprocess.run(["scancel", orphan], env=env, check=True)
    time.sleep(3)  # past the 2 s grace period: the killed sweep's trial is stale

    rerun = run_sweep(args, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = trials_of(url)
    print(
        f"slurm sweep: {time.monotonic() - started:.0f} s;",
        [(t.number, t.state.name, t.user_attrs.get("slurm_job_id")) for t in trials],
    )
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and len(trials) == 4
    assert trials[0].state.name == "COMPLETE" and trials[1].state.name == "FAIL"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.state.name == "COMPLETE" and retry.params == trials[1].params
    # Every trial ran as its own Slurm job, none on the sweeper's process.
    jobs = [t.user_attrs["slurm_job_id"] for t in complete]
    assert len(set(jobs)) == 3 and orphan not in jobs
    assert all(t.user_attrs["job_worker"] != t.user_attrs["sweeper"] for t in complete)
    assert (sweep_dir / ".submitit").is_dir()
    listed = {t["number"]: t.get("slurm_job_id") for t in results(sweep_dir)["trials"]}
    assert {listed[t.number] for t in complete} == set(jobs)

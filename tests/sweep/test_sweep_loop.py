"""The sweep loop with a stand-in launcher (no training): counting, batching, failure budget,
the trial identity handed to each job, and the results file."""

from __future__ import annotations

import errno
import os
import signal

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from sweep_helpers import PROJECT_DIR, results

from sweeper import sweep_loop
from sweeper.interrupt import Interrupted
from sweeper.sweep_loop import ResultsNotWrittenError, SweepAbortedError, SweepRunner
from trainer.atomic_write import atomic_path


class FakeLauncher:
    """Answers each job with ``answer(overrides)``: a dict outcome or an exception."""

    def __init__(self, answer):
        self.answer, self.batches = answer, []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append([list(o) for o in job_overrides])
        returns = []
        for overrides in job_overrides:
            ret = JobReturn(overrides=list(overrides))
            answer = self.answer(list(overrides))
            if isinstance(answer, Exception):
                ret.status, ret._return_value = JobStatus.FAILED, answer
            else:
                ret.status, ret.return_value = JobStatus.COMPLETED, answer
            returns.append(ret)
        return returns


@pytest.fixture
def runner_for(tmp_path):
    def make(launcher, *arguments):
        base = [
            f"paths.project_dir={PROJECT_DIR}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "search.heartbeat.interval=null",
        ]
        with initialize_config_dir(config_dir=str(PROJECT_DIR / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *arguments], return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            loader = GlobalHydra.instance().config_loader()
            return SweepRunner(cfg, launcher, loader), [*base, *arguments]

    return make


def outcome(value: float, state: str = "COMPLETE") -> dict:
    return {"state": state, "values": [value], "best_epoch": 2,
            "pruned_at_epoch": 1 if state == "PRUNED" else None}  # fmt: skip


def test_runs_until_n_trials_finished_in_batches_with_the_trial_identity(runner_for, tmp_path):
    def answer(overrides):
        number = int(overrides[-1].rsplit("=", 1)[1])
        return outcome(float(number), "PRUNED" if number == 1 else "COMPLETE")

    launcher = FakeLauncher(answer)
    runner, args = runner_for(launcher, "search.n_trials=5", "search.n_jobs=2")
    summary = runner.run(args)
    # Batches of n_jobs, the last one only as large as what is missing.
    assert [len(b) for b in launcher.batches] == [2, 2, 1]
    first = launcher.batches[0][0]
    assert first[: len(args)] == args  # the fixed overrides reach every job
    assert first[-2] == f"+optuna.study={summary['study_name']}"
    assert first[-1] == "+optuna.trial_number=0"
    # The job's MLflow run nests under the sweep's parent run (tracking is on by default).
    assert first[-3] == f"+tracking.parent_run_id='{runner.tracker.run_id}'"
    assert {o.split("=")[0] for o in first[len(args) : -3]} == {
        "network.dim", "network.alpha", "optimizer.unet_lr"
    }  # fmt: skip
    assert summary["states"] == {"COMPLETE": 4, "PRUNED": 1}
    assert summary["best"]["number"] == 4  # maximize eval/objective
    assert summary["best"]["best_epoch"] == 2
    assert results(tmp_path / "sweep")["states"] == summary["states"]
    # The same command again: the study is complete, nothing is launched.
    again = FakeLauncher(answer)
    runner, args = runner_for(again, "search.n_trials=5", "search.n_jobs=2")
    assert runner.run(args)["study_name"] == summary["study_name"] and again.batches == []


def test_failed_trials_do_not_count_and_too_many_stop_the_sweep(runner_for, tmp_path):
    runner, args = runner_for(
        FakeLauncher(lambda overrides: RuntimeError("CUDA out of memory")),
        "search.n_trials=4",
        "search.max_failure_rate=0.5",
    )
    with pytest.raises(SweepAbortedError, match="3 trials failed in this sweep"):
        runner.run(args)
    trials = results(tmp_path / "sweep")["trials"]
    assert [t["state"] for t in trials] == ["FAIL"] * 3  # 3 > 0.5 x 4
    assert trials[0]["fail_reason"] == "RuntimeError: CUDA out of memory"


def test_a_full_disk_in_a_trial_fails_that_trial_naming_the_file(runner_for, tmp_path):
    lora = tmp_path / "sweep" / "trial_1" / "lora.safetensors"

    def answer(overrides):
        number = int(overrides[-1].rsplit("=", 1)[1])
        if number != 1:
            return outcome(float(number))
        try:  # what the trial's save does when the disk fills up under it
            with atomic_path(lora):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            return exc

    runner, args = runner_for(FakeLauncher(answer), "search.n_trials=3")
    summary = runner.run(args)
    assert summary["states"] == {"COMPLETE": 3, "FAIL": 1}  # the sweep went on
    failed = [t for t in results(tmp_path / "sweep")["trials"] if t["state"] == "FAIL"]
    assert failed[0]["number"] == 1
    assert failed[0]["fail_reason"].startswith("OSError: [Errno 28] No space left on device")
    assert str(lora) in failed[0]["fail_reason"]
    assert list(lora.parent.iterdir()) == []


def test_a_full_disk_in_the_sweeper_keeps_the_results_file_and_the_study(
    runner_for, tmp_path, full_disk
):
    def answer(overrides):
        return outcome(float(overrides[-1].rsplit("=", 1)[1]))

    runner, args = runner_for(FakeLauncher(answer), "search.n_trials=2", "search.study_name=s")
    runner.run(args)
    path = tmp_path / "sweep" / "optuna_results.yaml"
    before = path.read_text()
    assert "number: 1" in before
    full_disk()
    runner, args = runner_for(FakeLauncher(answer), "search.n_trials=3", "search.study_name=s")
    with pytest.raises(ResultsNotWrittenError) as info:
        runner.run(args)
    message = str(info.value)
    assert "No space left on device" in message and str(path) in message
    assert "'s'" in message and "intact" in message and "run the same command again" in message
    assert path.read_text() == before  # not a 0-byte file
    assert [p.name for p in path.parent.iterdir()] == ["optuna_results.yaml"]
    storage = f"sqlite:///{tmp_path / 'runs' / 'lorasweep_optuna.db'}"
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


SEARCHED = ("network.dim", "network.alpha", "optimizer.unet_lr", "optimizer.lr")


def _searched(job: list[str]) -> dict[str, str]:
    """The searched keys' values in one job's overrides (a key given on the command line is
    pinned there, not searched: the recipe is what the config files set)."""
    pairs = [o.split("=", 1) for o in job if "=" in o]
    return {k: v for k, v in pairs if k in SEARCHED}


def test_first_trial_recipe_runs_the_configs_own_values_once(runner_for):
    # Prodigy sets its own step size, so the LR is not searched: dim and alpha are.
    launcher = FakeLauncher(lambda overrides: outcome(0.5))
    runner, args = runner_for(
        launcher, "search.n_trials=3", "search.first_trial=recipe", "optimizer=prodigy"
    )
    summary = runner.run(args)
    jobs = [job for batch in launcher.batches for job in batch]
    # network.alpha is searched as a fraction of the rank: 1 / 8 -> alpha 1 again.
    assert _searched(jobs[0]) == {"network.dim": "8", "network.alpha": "1"}
    # The other trials are the sampler's (it may draw the recipe's values again: the space
    # is small, so count the enqueued trials instead of comparing values).
    trials = optuna.load_study(study_name=summary["study_name"], storage=summary["storage"]).trials
    assert len(jobs) == len(trials) == 3
    assert [t.number for t in trials if t.user_attrs.get("recipe")] == [0]
    assert [t.number for t in trials if "fixed_params" in t.system_attrs] == [0]
    # Resumed with one more trial: the recipe is not enqueued a second time.
    again = FakeLauncher(lambda overrides: outcome(0.5))
    runner, args = runner_for(
        again, "search.n_trials=4", "search.first_trial=recipe", "optimizer=prodigy"
    )
    summary = runner.run(args)
    trials = optuna.load_study(study_name=summary["study_name"], storage=summary["storage"]).trials
    assert len(again.batches) == 1 and len(trials) == 4
    assert [t.number for t in trials if t.user_attrs.get("recipe")] == [0]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ((), "optimizer.unet_lr is not set in the config"),
        (
            ("optimizer=prodigy", "search.params.network.dim.high=6"),
            "network.dim=8 is outside search.params.network.dim",
        ),
    ],
)
def test_a_recipe_outside_the_space_is_not_enqueued_and_says_why(
    runner_for, caplog, overrides, reason
):
    launcher = FakeLauncher(lambda overrides: outcome(0.5))
    runner, args = runner_for(
        launcher, "search.n_trials=1", "search.first_trial=recipe", *overrides
    )
    with caplog.at_level("WARNING"):
        runner.run(args)
    assert "search.first_trial=recipe: not enqueued" in caplog.text and reason in caplog.text
    assert len(launcher.batches) == 1


def test_the_world_experiment_starts_with_its_recipe(runner_for):
    launcher = FakeLauncher(lambda overrides: outcome(0.5))
    runner, args = runner_for(launcher, "+experiment=world", "search.n_trials=2")
    summary = runner.run(args)
    assert _searched(launcher.batches[0][0]) == {"network.dim": "16", "optimizer.lr": "0.002"}
    trials = optuna.load_study(study_name=summary["study_name"], storage=summary["storage"]).trials
    assert [t.number for t in trials if "fixed_params" in t.system_attrs] == [0]


class SlurmJobsThenSigterm:
    """A launcher whose jobs started in Slurm (each trial records its job, as
    ``sweeper.trial`` does in the job) when SIGTERM reaches the sweeper."""

    def __init__(self, storage: str, jobs: dict[int, tuple[str, str]]):
        self.storage, self.jobs = storage, jobs  # trial number -> (job id, job worker)

    def launch(self, job_overrides, initial_job_idx):
        (summary,) = optuna.get_all_study_summaries(self.storage)
        study = optuna.load_study(study_name=summary.study_name, storage=self.storage)
        for trial in study.trials:
            if trial.number in self.jobs:
                job, worker = self.jobs[trial.number]
                study._storage.set_trial_user_attr(trial._trial_id, "slurm_job_id", job)
                study._storage.set_trial_user_attr(trial._trial_id, "job_worker", worker)
        raise Interrupted(signal.SIGTERM)


def _fake_scancel(folder, exit_code: int = 0):
    folder.mkdir()
    calls = folder / "calls"
    script = folder / "scancel"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\necho "no such job" >&2\nexit {exit_code}\n'
    )
    script.chmod(0o755)
    return calls


def test_an_interrupted_sweep_cancels_the_slurm_jobs_of_its_trials(
    runner_for, tmp_path, monkeypatch, caplog
):
    calls = _fake_scancel(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the sweeper runs in an allocation of its own
    storage = f"sqlite:///{tmp_path / 'runs' / 'lorasweep_optuna.db'}"
    # Trial 0 runs in job 101 on a node; trial 1 was launched in the sweeper's own job (77),
    # trial 2 in its own job but in the sweeper's process: neither of those is cancelled.
    launcher = SlurmJobsThenSigterm(
        storage, {0: ("101", "node-a:12"), 1: ("77", "node-b:3"), 2: ("102", "SWEEPER")}
    )
    runner, args = runner_for(launcher, "search.n_trials=3", "search.n_jobs=3")
    real_worker = sweep_loop.worker_name
    monkeypatch.setattr(sweep_loop, "worker_name", lambda: "SWEEPER")
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        runner.run(args)
    monkeypatch.setattr(sweep_loop, "worker_name", real_worker)
    assert calls.read_text().split() == ["101"]
    assert "cancelled the interrupted trials' Slurm jobs: 101" in caplog.text
    trials = optuna.load_study(
        study_name=optuna.get_all_study_summaries(storage)[0].study_name, storage=storage
    ).trials
    assert [t.state.name for t in trials[:3]] == ["FAIL"] * 3  # and queued again
    assert [t.state.name for t in trials[3:]] == ["WAITING"] * 3


def test_a_failing_scancel_says_what_to_run_by_hand(tmp_path, monkeypatch, caplog):
    from sweeper.slurm import cancel_jobs

    calls = _fake_scancel(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level("WARNING"):
        assert cancel_jobs(["5", "6"]) is False
    assert calls.read_text().split() == ["5", "6"]
    assert "scancel exited 1: no such job" in caplog.text and "run `scancel 5 6`" in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scancel at all
    with caplog.at_level("WARNING"):
        assert cancel_jobs(["7"]) is False
    assert "run `scancel 7`" in caplog.text

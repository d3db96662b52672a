"""The tracking runs against a real (embedded SQLite) MLflow store, driven by a hand-made
Optuna study and fake training events: what pruned, failed and dead trials leave behind, the
parent run's reuse, single runs, and an unreachable server."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from optuna.trial import TrialState
from PIL import Image

from sweeper.tracking import (
    MlflowCallback,
    finish_sweep_run,
    job_overrides,
    record_trial,
    single_run,
    start_sweep_run,
    trial_run,
)
from sweeper.tracking.runs import open_run, read_tracking
from trainer.loop.callbacks import EpochScores
from trainer.loop.train import EpochRecord, TrainResult

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlruns")
    return root, MlflowClient(f"sqlite:///{root}/mlflow.db")


def _cfg(mlruns: Path, out: Path, *extra: str):
    overrides = [
        f"paths.project_dir={PROJECT}",
        f"paths.output_dir={out}",
        f"tracking.mlruns_dir={mlruns}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


class FakeEvaluation:
    """Stands for EvaluationCallback: the run's scores and the files it wrote."""

    def __init__(self, out: Path):
        self.output_dir, self.results, self.files = out, EpochScores(), {}

    def add(self, epoch: int, objective: float) -> None:
        folder = self.output_dir / f"epoch-{epoch:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(folder / "unet_x_te-tiny.png")
        (folder / "metrics.json").write_text(json.dumps({"epoch": epoch}))
        self.results.add(epoch, {"eval/objective": objective, "eval/clip_i@unet0.5_te1.0": 0.1})
        self.files[epoch] = {"grid": folder / "unet_x_te-tiny.png", "m": folder / "metrics.json"}


def _ask(study: optuna.Study, dim: int) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_int("network.dim", 1, 64)
    trial.set_user_attr("config_values", {"network.dim": dim})
    return trial


def _job_cfg(mlruns, tmp_path, study, trial, parent):
    """What the sweeper launches: the sampled values plus the trial's identity."""
    return _cfg(
        mlruns,
        tmp_path / f"trial_{trial.number}",
        f"network.dim={trial.user_attrs['config_values']['network.dim']}",
        f"+optuna.study={study.study_name}",
        f"+optuna.trial_number={trial.number}",
        *job_overrides(parent),
    )


def _train(run, tmp_path, steps: int, epochs: dict[int, float], fail_at: int | None = None):
    evaluation = FakeEvaluation(tmp_path / "eval")
    callback = MlflowCallback(run, evaluation)
    callback.on_train_start({"epochs": 3})
    for step in range(1, steps + 1):
        if step == fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        callback.on_step(step, {"train/loss": 0.1 * step, "train/lr_unet": 1e-4, "train/d": 2.0})
        epoch = (step + 1) // 2
        if step % 2 == 0 and epoch in epochs:
            evaluation.add(epoch, epochs[epoch])
            path = tmp_path / f"lora-{epoch}.safetensors"
            record = EpochRecord(epoch, step, 0.1, 2, 2, path, False, evaluation.results)
            callback.on_epoch_scored(record)
    return callback


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_pruned_failed_and_dead_trials_keep_what_they_logged(store, tmp_path):
    mlruns, client = store
    study = optuna.create_study(
        study_name="fake-study", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize"
    )
    study.set_metric_names(["eval/objective"])
    parent = start_sweep_run(_cfg(mlruns, tmp_path / "sweep"), study, ["network.dim=4"])
    assert study.user_attrs["mlflow_parent_run_id"] == parent.run_id

    # Trial 0 completes; trial 1 is pruned after epoch 1; trial 2 fails at step 3.
    complete = _ask(study, 12)
    with trial_run(_job_cfg(mlruns, tmp_path, study, complete, parent), complete) as run:
        _train(run, tmp_path, 4, {1: 0.2, 2: 0.3})
        lora = tmp_path / "lora-2.safetensors"
        lora.write_bytes(b"weights")
        run.complete("COMPLETE", 2, [SimpleNamespace(epoch=2, path=lora)])
    study.tell(complete, 0.3)
    record_trial(parent, study, complete.number)

    pruned = _ask(study, 16)
    with trial_run(_job_cfg(mlruns, tmp_path, study, pruned, parent), pruned) as run:
        callback = _train(run, tmp_path, 2, {1: 0.1})
        end = TrainResult(global_step=2, epochs_done=1, stopped_early="pruned at epoch 1")
        end.scores = callback.evaluation.results
        callback.on_train_scored(end)
        run.complete("PRUNED", 1, [], "pruned at epoch 1")
    study.tell(pruned, state=TrialState.PRUNED)
    record_trial(parent, study, pruned.number)

    failed = _ask(study, 32)
    failed_cfg = _job_cfg(mlruns, tmp_path, study, failed, parent)
    with pytest.raises(RuntimeError), trial_run(failed_cfg, failed) as run:
        _train(run, tmp_path, 4, {1: 0.1}, fail_at=3)
    failed.set_user_attr("fail_reason", "RuntimeError: CUDA out of memory (simulated)")
    study.tell(failed, state=TrialState.FAIL)
    record_trial(parent, study, failed.number)

    # Trial 3's process dies: its run stays RUNNING until the sweeper tells the failure.
    dead = _ask(study, 4)
    settings = read_tracking(_cfg(mlruns, tmp_path).tracking)
    orphan = open_run(settings, "x", "trial-3", {}, parent.run_id)
    dead.set_user_attr("mlflow_run_id", orphan.run_id)
    dead.set_user_attr("fail_reason", "the process running it stopped (no heartbeat)")
    study.tell(dead, state=TrialState.FAIL)
    record_trial(parent, study, dead.number)
    summary = {"states": {"COMPLETE": 1, "PRUNED": 1, "FAIL": 2}, "best": {"number": 0}}
    finish_sweep_run(parent, summary, None)

    experiment = client.get_experiment_by_name("fake-study").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert set(runs) == {"fake-study", "trial-0", "trial-1", "trial-2", "trial-3"}
    for name in ("trial-0", "trial-1", "trial-2", "trial-3"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.run_id
    c0, c1, c2, c3 = (runs[f"trial-{i}"] for i in range(4))
    assert (c0.info.status, c0.data.tags["optuna.trial_state"]) == ("FINISHED", "COMPLETE")
    assert c0.data.tags["lorasweep.best_epoch"] == "2"
    assert c0.data.params["sampled/network.dim"] == c0.data.params["network.dim"] == "12"
    assert _history(client, c0.info.run_id, "eval/objective") == [(1, 0.2), (2, 0.3)]
    loras = client.list_artifacts(c0.info.run_id, "lora")
    assert [a.path for a in loras] == ["lora/lora-2.safetensors"]
    grids = client.list_artifacts(c0.info.run_id, "eval/epoch-000002")
    assert {a.path.rsplit("/", 1)[1] for a in grids} == {"unet_x_te-tiny.png", "metrics.json"}
    table = client.download_artifacts(c0.info.run_id, "scores/epoch_scores.json", str(tmp_path))
    assert json.loads(Path(table).read_text())["2"]["eval/objective"] == 0.3

    assert (c1.info.status, c1.data.tags["optuna.trial_state"]) == ("FINISHED", "PRUNED")
    assert c1.data.tags["lorasweep.stop_reason"] == "pruned at epoch 1"
    assert _history(client, c1.info.run_id, "eval/objective") == [(1, 0.1)]

    assert (c2.info.status, c2.data.tags["optuna.trial_state"]) == ("FAILED", "FAIL")
    assert c2.data.tags["fail_reason"] == "RuntimeError: CUDA out of memory (simulated)"
    assert [s for s, _ in _history(client, c2.info.run_id, "train/loss")] == [1, 2]
    smoothed = _history(client, c2.info.run_id, "train/loss_moving_avg")
    assert smoothed == [(1, 0.1), (2, pytest.approx(0.15))]
    assert _history(client, c2.info.run_id, "train/d") == [(1, 2.0), (2, 2.0)]

    assert (c3.info.status, c3.data.tags["optuna.trial_state"]) == ("FAILED", "FAIL")
    assert "no heartbeat" in c3.data.tags["fail_reason"]

    p = runs["fake-study"]
    assert p.info.status == "FINISHED" and p.data.tags["lorasweep.role"] == "sweep"
    assert p.data.tags["best.trial"] == "0" and p.data.tags["trials.FAIL"] == "2"
    assert _history(client, parent.run_id, "trials/eval/objective") == [(0, 0.3)]
    assert len(p.data.tags["data.hash"]) == 64 and len(p.data.tags["git.commit"]) == 40

    # A rerun of the same study reopens the same parent run.
    again = start_sweep_run(_cfg(mlruns, tmp_path / "sweep2"), study, ["network.dim=4"])
    assert again.run_id == parent.run_id
    assert client.get_run(parent.run_id).info.status == "RUNNING"
    finish_sweep_run(again, {"states": {}}, None)


def test_a_single_run_is_one_run_outside_any_sweep(store, tmp_path):
    mlruns, client = store
    with single_run(_cfg(mlruns, tmp_path, "run_name=solo")) as run:
        run.log_metrics({"train/loss": 0.5}, step=1)
    (found,) = client.search_runs([client.get_experiment_by_name("lorasweep").experiment_id])
    assert found.info.run_name == "solo" and found.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in found.data.tags
    assert found.data.tags["lorasweep.role"] == "run"
    assert found.data.params["run_name"] == "solo"
    config = client.list_artifacts(found.info.run_id, "config")
    assert [a.path for a in config] == ["config/resolved_config.yaml"]


@pytest.fixture(params=["closed port", "silent server"])
def unreachable_uri(request):
    """A tracking URI nobody answers at: a closed port, or a socket that accepts connections
    and never replies."""
    if request.param == "closed port":
        yield "http://127.0.0.1:9"
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def test_an_unreachable_tracking_server_never_fails_the_run(tmp_path, unreachable_uri, caplog):
    """Without MLflow's retry settings touched: seconds, not minutes of HTTP retries, and one
    warning naming tracking.uri and its value."""
    cfg = _cfg(tmp_path, tmp_path, f"tracking.uri={unreachable_uri}")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sweeper.tracking"):
        with single_run(cfg) as run:
            assert not run.active
            run.log_metrics({"train/loss": 0.5}, step=1, now=True)
            MlflowCallback(run).on_step(1, {"train/loss": 0.5})
        with single_run(cfg) as again:  # a second run of the process: no second warning
            assert not again.active
    assert time.monotonic() - started < 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"tracking.uri={unreachable_uri}" in warnings[0]
    assert "untracked" in warnings[0]


def test_workers_starting_together_on_a_new_store_all_get_their_runs(tmp_path):
    """Joblib workers or sweepers started at once must not migrate a new SQLite store twice
    (without the lock, every one of them failed to open its run)."""
    script = (
        "import sys\n"
        "from sweeper.tracking.runs import TrackingSettings, open_run\n"
        "settings = TrackingSettings(enabled=True, uri=sys.argv[1])\n"
        "run = open_run(settings, 'together', sys.argv[2], {})\n"
        "run.end()\n"
        "print('active' if run.active else 'inactive')\n"
    )
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, f"run-{i}"],
            cwd=PROJECT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [out.strip() for out, _ in outputs] == ["active", "active"], outputs
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1"]

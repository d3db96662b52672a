"""``python -m sweeper -m`` end to end: pruning, failed trials, a rejected search space.

Trials are tiny (two images, two steps per epoch); the objective is the per-epoch training
loss, which needs no evaluation. Grid orders are fixed by the sampler seed (numpy's shuffle).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from sweep_helpers import (
    PROJECT_DIR,
    default_storage,
    load_study,
    make_dataset,
    results,
    run_sweep,
    sweep_env,
    tiny_overrides,
)

from sweeper.results import python_command
from trainer.networks.kohya_format import read_lora

pytestmark = pytest.mark.slow

# The cheapest evaluation that still scores every epoch (random-weight tiny scorers).
MINIMAL_EVAL = [
    "eval.prompts=['a photo of {trigger}']",
    "eval.strengths=[1.0]",
    "eval.unet_strengths=[]",
    "eval.te_strengths=[]",
    "eval.steps=2",
    "eval.save_grids=false",
    "eval.metrics=[clip_i,clip_t]",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data")
    return make_dataset(root), root / "cache"


def test_category_f_with_prodigy_fixed_searches_ranks_in_f_range(shared, tmp_path):
    """The issue's command, on the tiny model: `python -m sweeper +category=F optimizer=prodigy
    -m search.n_trials=4` plus overrides that keep it short (2 images, 4 steps)."""
    data_dir, cache = shared
    sweep_dir = tmp_path / "sweep"
    args = [
        "+category=F",
        "optimizer=prodigy",
        "-m",
        "search.n_trials=4",
        f"data.dir={data_dir}",
        "train.max_train_steps=4",
        "train.progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
        *MINIMAL_EVAL,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "sweeper", *args], cwd=PROJECT_DIR,
        env=sweep_env(tmp_path, cache), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = results(sweep_dir)
    assert summary["study_name"].startswith("lorasweep-F-")
    assert summary["metrics"] == ["eval/objective"]
    assert len(summary["trials"]) == 4
    for trial in summary["trials"]:
        assert trial["state"] in ("COMPLETE", "PRUNED")
        # Prodigy is fixed and adaptive: F's LR range is left out; F's rank range is searched.
        assert set(trial["params"]) == {"network.dim", "network.alpha"}
        assert 64 <= trial["params"]["network.dim"] <= 128
        # What was trained, read back from the saved adapter's metadata.
        _, meta = read_lora(
            sorted((sweep_dir / f"trial_{trial['number']}").glob("*.safetensors"))[0]
        )
        assert meta["ss_network_dim"] == str(trial["params"]["network.dim"])
        assert meta["ss_network_alpha"] == str(float(trial["params"]["network.alpha"]))
        assert meta["ss_optimizer"].startswith("prodigyopt.prodigy.Prodigy")
        assert 1 <= trial["params"]["network.alpha"] <= trial["params"]["network.dim"]
    best = summary["best"]
    prefix = f"{python_command()} -m sweeper +category=F optimizer=prodigy "
    assert best["command"].startswith(prefix)
    assert f"network.dim={best['params']['network.dim']}" in best["command"]
    assert "search.n_trials" not in best["command"]


def test_hopeless_learning_rates_are_pruned_before_their_last_epoch(shared, tmp_path):
    data_dir, cache = shared
    sweep_dir = tmp_path / "sweep"
    # Grid seed 1 walks 0.3 first, then the two rates too small to learn anything; the
    # median pruner compares each epoch's loss with the finished trials' at that epoch.
    args = [
        *tiny_overrides(data_dir, sweep_dir, epochs=3),
        "search.params=null",
        "optimizer.unet_lr=0.3,2e-9,1e-9",
        "search.sampler.name=grid",
        "search.sampler.seed=1",
        "search.pruner.name=median",
        "search.pruner.median={n_startup_trials:1,n_warmup_steps:0}",
        "search.n_trials=3",
    ]
    proc = run_sweep(args, sweep_env(tmp_path, cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = results(sweep_dir)
    trials = {t["params"]["optimizer.unet_lr"]: t for t in summary["trials"]}
    assert trials[0.3]["state"] == "COMPLETE"
    pruned = [t for lr, t in trials.items() if lr < 1e-6]
    assert [t["state"] for t in pruned] == ["PRUNED", "PRUNED"]
    study = load_study(summary, default_storage(tmp_path))
    for t in pruned:
        assert t["pruned_at_epoch"] == 1
        assert list(study.trials[t["number"]].intermediate_values) == [1]
        # Training stopped there: epoch 1's file is the only one in the trial's folder.
        files = sorted(p.name for p in (sweep_dir / f"trial_{t['number']}").glob("*.safetensors"))
        assert files == ["lora_AdamW-000001.safetensors"]
    assert len(list((sweep_dir / f"trial_{trials[0.3]['number']}").glob("*.safetensors"))) == 3
    assert summary["best"]["params"] == {"optimizer.unet_lr": 0.3}
    assert "Best trial" in proc.stdout and str(sweep_dir / "optuna_results.yaml") in proc.stdout


def test_failing_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(shared, tmp_path):
    data_dir, cache = shared
    sweep_dir = tmp_path / "sweep"
    # Grid seed 1 walks 1e-4, 1e4, 3e-4. Trial 0 hits a simulated out-of-memory error (a
    # test-only callback, through the config's `callbacks:` hook); trial 1's learning rate
    # makes the loss NaN at its second step, which the divergence guard turns into a failure.
    args = [
        *tiny_overrides(data_dir, sweep_dir, epochs=1),
        "search.params=null",
        "optimizer.unet_lr=1e-4,3e-4,1e4",
        "search.sampler.name=grid",
        "search.sampler.seed=1",
        "search.n_trials=3",
        "search.max_failure_rate=1.0",
        "+callbacks.oom._target_=sweep_faults.SimulatedOutOfMemory",
        "+callbacks.oom.trial_number=${optuna.trial_number}",
        "+callbacks.oom.fail_trial=0",
    ]
    proc = run_sweep(args, sweep_env(tmp_path, cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = results(sweep_dir)["trials"]
    assert [t["state"] for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert trials[0]["fail_reason"] == (
        "OutOfMemoryError: CUDA out of memory (simulated by the sweep tests)"
    )
    assert trials[1]["params"] == {"optimizer.unet_lr": 1e4}
    assert trials[1]["fail_reason"].startswith(
        "TrainingDivergedError: non-finite training loss (nan) at step 2"
    )
    assert trials[2]["values"] and trials[2]["best_file"].endswith("lora_AdamW.safetensors")
    study = load_study(results(sweep_dir), default_storage(tmp_path))
    assert study.trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError")


def _rejected_before_any_trial(shared, tmp_path, overrides: list[str], problems: list[str]):
    """The sweep exits 2 naming every problem, with no storage and no trial folder."""
    data_dir, cache = shared
    sweep_dir = tmp_path / "sweep"
    args = [*tiny_overrides(data_dir, sweep_dir), *overrides]
    proc = run_sweep(args, sweep_env(tmp_path, cache), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for problem in problems:
        assert problem in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "runs" / "lorasweep_optuna.db").exists()
    assert not list(sweep_dir.glob("trial_*"))


def test_a_bad_search_space_is_rejected_before_any_trial(shared, tmp_path):
    overrides = [
        "search.params.network.dim.type=uniformm",
        # Merged into the default fraction_of spec: its `of` is unset with a null.
        "search.params.network.alpha={type:int,low:1,high:128,of:null}",
        "search.params.optimizer.unet_lr.low=0.1",
    ]
    problems = [
        "search.params.network.dim.type: unknown distribution 'uniformm'",
        "search.params.network.alpha: impossible alpha constraint",
        "search.params.optimizer.unet_lr: low 0.1 > high 0.001",
    ]
    _rejected_before_any_trial(shared, tmp_path, overrides, problems)


def test_a_bad_eval_group_is_rejected_before_any_trial(shared, tmp_path):
    overrides = ["search.metrics=[eval/best_strength]", "search.directions=[maximize]"]
    problems = [
        "eval.steps: 0 is not allowed",
        "search.metrics[0]: 'eval/best_strength'",
        "eval.grid_epochs=all",
    ]
    _rejected_before_any_trial(shared, tmp_path, [*overrides, "eval.steps=0"], problems)

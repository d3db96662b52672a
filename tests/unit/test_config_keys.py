"""Keys that would do nothing are refused before training: a key no option file of its group
declares (with a "did you mean"), and metrics that nothing produces (listing what is allowed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.checks import run_problems
from sweeper.config_keys import unknown_key_problems
from trainer.errors import ConfigError
from trainer.validate import validate_run

PROJECT_DIR = Path(__file__).resolve().parents[2]


def problems(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        validate_run(cfg, extra_checks=[run_problems])
    return str(err.value)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("+network.dimm=4", "network.dimm: unknown key (value 4)"),
        ("+train.max_train_epoch=3", "train.max_train_epoch: unknown key (value 3)"),
        ("+model.clipskip=2", "model.clipskip: unknown key (value 2)"),
        ("+eval.objective.fidelity_weigth=0.3", "eval.objective.fidelity_weigth: unknown key"),
        ("+netwrk.dim=4", "netwrk: unknown key (value {'dim': 4})"),
    ],
)
def test_undeclared_keys_are_refused_with_a_suggestion(compose, override, says):
    message = problems(compose(override))
    assert says in message
    assert "would do nothing; did you mean" in message
    assert "allowed: " in message


def test_the_suggestion_and_the_allowed_keys_are_the_groups(compose):
    (problem,) = unknown_key_problems(compose("+network.dimm=4"))
    assert "no option file conf/network/*.yaml declares it" in problem
    assert "did you mean network.dim?" in problem
    assert "allowed: alpha, conv_alpha, conv_dim, dim, dropout, factor," in problem


def test_free_form_mappings_and_runtime_keys_take_any_key(compose):
    cfg = compose(
        "+optimizer.args.weight_decay=0.1",
        "+callbacks.mine._target_=x.Y",
        "+category.search.rank=[1,2]",
        "+tracking.parent_run_id=abc",
        "+optuna.trial_number=3",
    )
    assert unknown_key_problems(cfg) == []
    # A key one option declares is known for every option of its group (union).
    assert unknown_key_problems(compose("+train.num_class_images=10")) == []


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["search.metrics=[eval/clip_x]"], "search.metrics[0]: 'eval/clip_x' is produced by"),
        (["search.metrics=[eval/face_identity]"], "'eval/face_identity' is produced by nobody"),
        (
            ["search.metrics=[eval/clip_i@unet0.7_te1.0]", "eval.grid_epochs=all"],
            "'eval/clip_i@unet0.7_te1.0' is produced by nobody",
        ),
        (["search.metrics=[train/loss]"], "'train/loss' is produced by nobody"),
        (
            ["eval.metrics=[clip_x]", "search.metrics=[train/epoch_loss]",
             "search.directions=[minimize]"],
            "eval.metrics: ['clip_x'] is not allowed; allowed: clip_i, clip_t, dino, face",
        ),
    ],
)  # fmt: skip
def test_metrics_nobody_produces_are_refused(compose, overrides, says):
    message = problems(compose(*overrides))
    assert says in message
    if "search.metrics" in says:
        assert "allowed: train/epoch_loss, eval/clip_i, eval/clip_t, eval/clip_score" in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["search.metrics=[eval/face_identity]", "eval.metrics=[face,clip_t]"],
        ["search.metrics=[eval/clip_score]"],
        ["search.metrics=[eval/clip_i@unet0.5_te1.0]", "eval.grid_epochs=all"],
        ["search.metrics=[eval/fidelity,eval/adherence]", "search.directions=[maximize,maximize]",
         "search.pruner.name=none"],
    ],
)  # fmt: skip
def test_metrics_the_evaluation_produces_are_accepted(compose, overrides):
    assert run_problems(compose(*overrides)) == []


def test_cli_refuses_a_misspelt_key_before_training(tmp_path):
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sweeper", "+network.dimm=4", f"hydra.run.dir={run_dir}",
         "tracking.enabled=false"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "network.dimm: unknown key (value 4)" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(run_dir.glob("*.safetensors"))

"""A value given on the command line wins over a preset's: train.max_train_epochs clears a
category's or experiment's train.max_train_steps (runs, trials and the search space), and the
planned length is logged at the start of every run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeper.explicit import explicit_wins
from sweeper.search_config import build_search_space
from trainer.loop.train import plan_length

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", ["+category=F", "+experiment=easy", "+category=A"])
def test_epochs_on_the_command_line_clear_a_presets_steps(compose, preset, caplog):
    cli = [preset, "train.max_train_epochs=1"]
    cfg = compose(*cli)
    assert cfg.train.max_train_steps is not None  # the preset set it
    with caplog.at_level(logging.INFO, logger="sweeper.explicit"):
        run_cfg = explicit_wins(cfg, cli)
    assert run_cfg.train.max_train_steps is None and run_cfg.train.max_train_epochs == 1
    assert cfg.train.max_train_steps is not None  # the composed config is left as it was
    assert "train.max_train_epochs=1 is given on the command line" in caplog.text
    assert f"train.max_train_steps={cfg.train.max_train_steps} is cleared" in caplog.text


def test_steps_stay_when_both_are_given_or_epochs_are_not(compose):
    both = ["+category=F", "train.max_train_epochs=1", "++train.max_train_steps=7"]
    assert explicit_wins(compose(*both), both).train.max_train_steps == 7
    preset_only = ["+category=F", "network.dim=64"]
    assert explicit_wins(compose(*preset_only), preset_only).train.max_train_steps == 2000


def _space(cfg, *cli):
    overrides = OverridesParser.create().parse_overrides(list(cli))
    return {
        p.key: p for p in build_search_space(cfg.search, cfg, overrides, lambda _: None).params
    }


def test_a_sweep_searches_no_step_count_when_epochs_are_given(compose):
    cfg = compose("+category=F", "train.max_train_epochs=1")
    assert "train.max_train_steps" in _space(compose("+category=F"), "+category=F")
    assert "train.max_train_steps" not in _space(cfg, "+category=F", "train.max_train_epochs=1")
    # Swept on the command line too: both are the user's, the steps sweep stays.
    kept = _space(cfg, "train.max_train_epochs=1", "train.max_train_steps=10,20")
    assert kept["train.max_train_steps"].choices == (10, 20)


def test_the_plan_is_logged_with_what_set_it(caplog):
    with caplog.at_level(logging.INFO, logger="trainer.loop.train"):
        assert plan_length(4, 2, 3, None) == (3, 6)
        assert plan_length(4, 1, 1, 10) == (3, 10)
    assert "plan: 6 optimizer steps over 3 epochs of 2 steps, set by train.max_train_epochs=3" in (
        caplog.text
    )
    assert (
        "plan: 10 optimizer steps over 3 epochs of 4 steps, set by train.max_train_steps=10"
        in (caplog.text)
    )


def test_cli_run_with_a_category_trains_the_epochs_it_was_given(tmp_path):
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "sweeper", "+category=F", "train.max_train_epochs=1",
            f"hydra.run.dir={run_dir}", "train.progress_bar=false", "tracking.enabled=false",
            "search.metrics=[train/epoch_loss]", "search.directions=[minimize]",
        ],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "the preset's train.max_train_steps=2000 is cleared" in out
    assert "over 1 epochs" in out and "set by train.max_train_epochs=1" in out
    assert "over 1 epochs." in proc.stdout or "over 1 epochs in" in proc.stdout
    assert "max_train_steps: null" in (run_dir / "resolved_config.yaml").read_text()

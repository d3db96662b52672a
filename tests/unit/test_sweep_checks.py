"""Up-front checks of the eval and search groups, reported with the trainer's own problems."""

from __future__ import annotations

import pytest

from sweeper.checks import evaluation_problems
from trainer.errors import ConfigError
from trainer.validate import validate_run


def test_a_grid_metric_needs_the_grid_at_every_epoch(compose):
    cfg = compose("search.metrics=[eval/clip_i@unet0.5_te0.5,eval/best_strength]")
    problems = evaluation_problems(cfg)
    assert len(problems) == 2
    assert "search.metrics[0]: 'eval/clip_i@unet0.5_te0.5'" in problems[0]
    assert "eval.grid_epochs is 'best'" in problems[0] and "grid_epochs=all" in problems[0]
    assert "search.metrics[1]: 'eval/best_strength'" in problems[1]
    all_epochs = compose(
        "search.metrics=[eval/clip_i@unet0.5_te0.5,eval/best_strength]", "eval.grid_epochs=all"
    )
    assert evaluation_problems(all_epochs) == []
    assert evaluation_problems(compose()) == []


def test_eval_problems_come_with_the_trainers_in_one_error(compose):
    cfg = compose("eval.grid_epochs=sometimes", "eval.steps=0", "train.max_train_epochs=-1")
    with pytest.raises(ConfigError) as error:
        validate_run(cfg, extra_checks=[evaluation_problems])
    text = str(error.value)
    assert "eval.grid_epochs: 'sometimes'" in text and "best, last, all, none" in text
    assert "eval.steps: 0" in text
    assert "train.max_train_epochs" in text


def test_no_eval_check_when_the_objective_is_a_training_metric(compose):
    cfg = compose("search.metrics=[train/epoch_loss]", "search.directions=[minimize]")
    cfg.eval.steps = 0  # never read: the evaluators do not run
    assert evaluation_problems(cfg) == []


@pytest.mark.parametrize("train", ["dreambooth", "textual_inversion"])
def test_modes_that_save_no_lora_need_a_training_metric(compose, train):
    # Alone, the train group scores its runs by the training loss (train.score_metrics).
    alone = compose(f"train={train}")
    assert list(alone.search.metrics) == ["train/epoch_loss"]
    assert list(alone.search.directions) == ["minimize"]
    assert evaluation_problems(alone) == []
    problems = evaluation_problems(compose(f"train={train}", "search.metrics=[eval/objective]"))
    assert len(problems) == 1
    assert (
        f"train.mode={train}" in problems[0] and "search.metrics=[train/epoch_loss]" in problems[0]
    )
    training_metric = compose(
        f"train={train}", "search.metrics=[train/epoch_loss]", "search.directions=[minimize]"
    )
    assert evaluation_problems(training_metric) == []


@pytest.mark.parametrize("experiment", ["dreambooth_blog", "pivotal_tuning", "pivotal_tuning_ti"])
def test_the_mode_experiments_report_the_training_loss(compose, experiment):
    cfg = compose(f"+experiment={experiment}")
    assert list(cfg.search.metrics) == ["train/epoch_loss"]
    assert evaluation_problems(cfg) == []

"""eval.every_n_epochs: auto: the cost units, the chosen N, the settings and the callback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from evaluators.cadence import auto_every_n_epochs, evaluation_units, overhead
from evaluators.callback import EvaluationCallback
from evaluators.objective import Diagnosis
from evaluators.results import EpochEvaluation
from evaluators.settings import read_eval_settings
from trainer.errors import ConfigError
from trainer.loop.train import EpochRecord, SavedEpoch, TrainResult

# 2 prompts x 1 image, 8 steps with guidance, val loss on 4 images x 4 timesteps.
BASE = {
    "prompts": ["a photo of sks", "a painting of sks"],
    "steps": 8,
    "guidance_scale": 7.0,
    "val_max_images": 4,
    "val_timesteps": [100, 400, 700, 900],
}


def _settings(**overrides):
    return read_eval_settings({**BASE, **overrides})


def test_units_of_one_evaluation_by_hand():
    # 2 images x 8 steps x 2 (CFG) + 2 decodes x 3 + 4 x 4 validation forwards.
    assert evaluation_units(_settings(), 2, 1, 64 * 64, 64 * 64) == 2 * 16 + 2 * 3 + 16 == 54
    assert evaluation_units(_settings(guidance_scale=1.0), 2, 1, 4096, 4096) == 16 + 6 + 16
    assert evaluation_units(_settings(metrics=["val_loss"]), 2, 1, 4096, 4096) == 16
    assert evaluation_units(_settings(metrics=["clip_t"]), 2, 1, 4096, 4096) == 38
    assert evaluation_units(_settings(), 2, 3, 4096, 4096) == 3 * 54  # per test checkpoint
    # grid_epochs: all scores every strength pair (here 4, repeats merged) at every epoch.
    grid = _settings(
        grid_epochs="all", strengths=[0.5, 1.0], unet_strengths=[0.5, 1.0], te_strengths=[0.5, 1.0]
    )
    assert len(grid.strength_pairs()) == 4
    assert evaluation_units(grid, 2, 1, 4096, 4096) == 4 * 54


def test_units_scale_with_the_evaluation_pixels():
    s = _settings()
    assert evaluation_units(s, 2, 1, 1024 * 1024, 512 * 512) == 4 * 54
    assert evaluation_units(s, 2, 1, 512 * 256, 512 * 512) == 54 / 2


def test_auto_every_n_epochs_by_hand():
    # With the brief's 3 forwards per trained image: 30 images = 90 units per epoch;
    # 54 / (N * 90) <= 0.2 first holds at N = 3 (exactly 0.2).
    assert auto_every_n_epochs(54, 30, 0.2, units_per_train_image=3) == 3
    assert overhead(54, 30, 3, units_per_train_image=3) == pytest.approx(0.2)
    # The measured 2.2: 66 units per epoch; 54 / (4 * 66) = 0.205 > 0.2, 54 / (5 * 66) = 0.164.
    assert auto_every_n_epochs(54, 30, 0.2) == 5
    assert overhead(54, 30, 4) > 0.2 >= overhead(54, 30, 5)
    assert auto_every_n_epochs(54, 1000, 0.2) == 1  # a big epoch: every epoch
    assert auto_every_n_epochs(0, 30, 0.2) == 1
    assert auto_every_n_epochs(54, 30, 0.05, units_per_train_image=3) == 12  # 54 / 4.5
    with pytest.raises(ValueError):
        auto_every_n_epochs(54, 0, 0.2)


def test_settings_accept_auto_and_max_overhead():
    s = read_eval_settings({"every_n_epochs": "auto", "max_overhead": 0.5})
    assert s.every_n_epochs == "auto" and s.max_overhead == 0.5
    d = read_eval_settings({})
    assert d.every_n_epochs == 1 and d.max_overhead == 0.2


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("every_n_epochs", 0, "an integer >= 1 or 'auto'"),
        ("every_n_epochs", "sometimes", "an integer >= 1 or 'auto'"),
        ("every_n_epochs", 1.5, "an integer >= 1 or 'auto'"),
        ("every_n_epochs", True, "an integer >= 1 or 'auto'"),
        ("max_overhead", 0, "a number > 0"),
        ("max_overhead", -0.1, "a number > 0"),
        ("max_overhead", "20%", "a number > 0"),
        ("max_overhead", float("nan"), "a number > 0"),
    ],
)
def test_bad_cadence_values_are_named(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        read_eval_settings({key: value})
    text = str(info.value)
    assert f"eval.{key}: {value!r}" in text and allowed in text


class _FakeHarness:
    """What EvaluationCallback touches; records the epochs and strength pairs evaluated."""

    def __init__(self, settings, n_checkpoints: int = 1, size=(64, 64)):
        self.settings = settings
        self.checkpoints = [f"ckpt{i}" for i in range(n_checkpoints)]
        self.size = size
        self.calls: list[tuple[int, object]] = []

    def items(self):
        return [object()] * (len(self.settings.prompts) * self.settings.images_per_prompt)

    def evaluate(self, path, epoch=None, pairs=None, extend=None):
        epoch = extend.epoch if extend else epoch
        self.calls.append((epoch, pairs))
        scores = {("ckpt0", u, t): {} for u, t in (pairs or self.settings.strength_pairs())}
        evaluation = EpochEvaluation(
            epoch, Path(path), scores, {}, Diagnosis(None, "not measured"), True, ["ckpt0"]
        )
        evaluation.metrics = {"eval/objective": float(epoch)}
        return evaluation


def _run(settings, info, epochs: int, resolution: int = 64, **harness_kw):
    cfg = OmegaConf.create({"run_name": "run", "eval": {}, "model": {"resolution": resolution}})
    harness = _FakeHarness(settings, **harness_kw)
    callback = EvaluationCallback(cfg, output_dir=None, harness=harness)
    callback.on_train_start({"epochs": epochs, **info})
    result = TrainResult()
    for epoch in range(1, epochs + 1):
        path = Path(f"/runs/run-{epoch:06d}.safetensors")  # the last epoch: by is_last alone
        result.saved.append(SavedEpoch(epoch, epoch, path))
        record = EpochRecord(epoch, epoch, 1.0, 1, 1, path, epoch == epochs, result.scores)
        callback.on_epoch_end(record)
    callback.on_train_end(result)
    return callback, harness


def test_auto_callback_evaluates_every_nth_and_the_last_epoch(caplog):
    s = _settings(every_n_epochs="auto", grid_epochs="none")
    with caplog.at_level(logging.INFO, logger="evaluators.callback"):
        callback, harness = _run(s, {"images_per_epoch": 30}, epochs=12)
    assert callback.every_n_epochs == 5  # 54 units vs 66 per epoch at 20%
    assert sorted(callback.results) == [5, 10, 12]
    assert [p for _, p in harness.calls] == [[(1.0, 1.0)]] * 3
    assert "every 5 epoch(s)" in caplog.text and "~16%" in caplog.text


def test_auto_callback_counts_checkpoints_pixels_and_the_batch_fallback():
    s = _settings(every_n_epochs="auto", grid_epochs="none")
    # Two test checkpoints double the cost: 108 / (N * 66) <= 0.2 -> N = 9.
    callback, _ = _run(s, {"images_per_epoch": 30}, epochs=12, n_checkpoints=2)
    assert callback.every_n_epochs == 9 and sorted(callback.results) == [9, 12]
    # Evaluating at half the training side: a quarter of the cost -> 13.5 / (N * 66) -> N = 2.
    callback, _ = _run(s, {"images_per_epoch": 30}, epochs=4, resolution=128)
    assert callback.every_n_epochs == 2 and sorted(callback.results) == [2, 4]
    # No sample count: batches x batch size (10 x 3 = 30 images).
    callback, _ = _run(s, {"batches_per_epoch": 10, "batch_size": 3}, epochs=6)
    assert callback.every_n_epochs == 5 and sorted(callback.results) == [5, 6]
    # Nothing known about the epoch: every epoch.
    callback, _ = _run(s, {}, epochs=2)
    assert callback.every_n_epochs == 1 and sorted(callback.results) == [1, 2]


def test_a_fixed_cadence_is_unchanged():
    s = _settings(every_n_epochs=2, grid_epochs="none")
    callback, _ = _run(s, {"images_per_epoch": 1}, epochs=5)
    assert callback.every_n_epochs == 2 and sorted(callback.results) == [2, 4, 5]

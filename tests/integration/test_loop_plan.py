"""The loop follows its own plan: optimizer steps, the LR schedule and the epoch loss.

Run at the default logging cadence (``train.log_every_n_steps=10``), as users run it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

import trainer.loop.train as loop
from sweeper.callbacks import EpochLoss
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import plan_length
from trainer.run import train_from_config

PROJECT_DIR = Path(__file__).resolve().parents[2]


class Records(TrainingCallback):
    def __init__(self):
        self.records, self.steps, self.saved = [], [], []

    def on_step(self, step, metrics):
        self.steps.append((step, metrics))

    def on_epoch_end(self, record):
        self.records.append(record)

    def on_epoch_scored(self, record):
        # Every callback has heard the epoch's record first, whatever the list's order.
        assert self.records[-1] is record
        if record.path is not None:
            self.saved.append(record.epoch)


def _count_batches(monkeypatch) -> list[int]:
    """Micro-batches seen between two optimizer steps, one entry per step."""
    seen = {"micro": 0}
    groups: list[int] = []
    real_loss, real_step = loop._batch_loss, loop._optimizer_step

    def counting_loss(*args, **kwargs):
        seen["micro"] += 1
        return real_loss(*args, **kwargs)

    def counting_step(*args, **kwargs):
        groups.append(seen["micro"])
        seen["micro"] = 0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_batch_loss", counting_loss)
    monkeypatch.setattr(loop, "_optimizer_step", counting_step)
    return groups


def _train(cfg, monkeypatch):
    """(result, the epochs' records, micro-batches per optimizer step) of one run."""
    groups = _count_batches(monkeypatch)
    rec = Records()
    result = train_from_config(cfg, callbacks=[rec])
    return result, rec, groups


@pytest.mark.parametrize(
    ("batch_size", "accumulation"),
    [(3, 4), (1, 4), (2, 1), (1, 5)],
    ids=["batch3-acc4", "batch1-acc4", "batch2-acc1", "batch1-acc5"],
)
def test_global_step_equals_the_plan(compose, monkeypatch, batch_size, accumulation):
    """Every epoch takes ceil(batches / accumulation) steps, the last on the remainder; the
    linear schedule reaches its end (lr 0) exactly at the last step."""
    epochs = 3
    cfg = compose(
        f"train.max_train_epochs={epochs}",
        f"train.batch_size={batch_size}",
        f"train.gradient_accumulation_steps={accumulation}",
        "scheduler=linear",
    )
    result, rec, groups = _train(cfg, monkeypatch)
    batches = rec.records[0].micro_batches
    assert all(r.micro_batches == batches for r in rec.records)
    per_epoch = math.ceil(batches / accumulation)
    _, planned = plan_length(batches, accumulation, epochs, None)
    assert planned == epochs * per_epoch
    assert result.global_step == planned
    assert [r.optimizer_steps for r in rec.records] == [per_epoch] * epochs
    assert [r.step for r in rec.records] == [per_epoch * e for e in (1, 2, 3)]
    remainder = batches % accumulation
    full = [accumulation] * (batches // accumulation)
    assert groups == (full + ([remainder] if remainder else [])) * epochs
    # The schedule was built for `planned` steps and the loop took them all: it ended.
    assert rec.steps[-1][0] == planned
    assert rec.steps[-1][1]["train/lr_unet"] == pytest.approx(0.0, abs=1e-12)


def test_eleven_batches_accumulation_four_three_epochs(compose, monkeypatch, tmp_path):
    """The issue's case: 11 batches, accumulation 4, 3 epochs = 9 optimizer steps (6 before)."""
    subject = tmp_path / "data" / "11_chelsea cat"
    subject.mkdir(parents=True)
    source = Path(PROJECT_DIR) / "data" / "sample" / "img" / "5_chelsea cat"
    for suffix in (".jpg", ".txt"):
        shutil.copy(source / f"chelsea_face{suffix}", subject / f"chelsea_face{suffix}")
    cfg = compose(
        f"data.dir={tmp_path / 'data'}",
        "train.max_train_epochs=3",
        "train.batch_size=1",
        "train.gradient_accumulation_steps=4",
    )
    result, rec, groups = _train(cfg, monkeypatch)
    assert [r.micro_batches for r in rec.records] == [11, 11, 11]
    assert result.global_step == 9
    assert groups == [4, 4, 3] * 3


def test_remainder_step_uses_the_mean_gradient(compose, monkeypatch):
    """A step on r < accumulation micro-batches gets the mean of their gradients, not
    r / accumulation of it: each micro-batch's loss is one adapter weight's sum, so the
    gradient of every step is exactly one for each element."""
    cfg = compose(
        "train.max_train_epochs=1",
        "train.batch_size=1",
        "train.gradient_accumulation_steps=4",
        "train.max_grad_norm=0",
        "data.enable_bucket=false",
    )
    probe: dict[str, torch.nn.Parameter] = {}
    grads: list[float] = []

    def fake_loss(batch, latents, unet, *args):
        if "p" not in probe:
            probe["p"] = next(p for p in unet.parameters() if p.requires_grad)
        return probe["p"].sum()

    real_step = loop._optimizer_step

    def recording_step(optimizer, *args, **kwargs):
        grads.append(float(probe["p"].grad.mean()))
        return real_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(loop, "_batch_loss", fake_loss)
    monkeypatch.setattr(loop, "_optimizer_step", recording_step)
    rec = Records()
    train_from_config(cfg, callbacks=[rec])
    assert rec.records[0].micro_batches % 4 != 0  # 30 batches: a remainder of 2
    assert grads == pytest.approx([1.0] * math.ceil(rec.records[0].micro_batches / 4))


def test_epoch_loss_is_the_mean_over_every_micro_batch(compose, monkeypatch):
    """At the default cadence (a log line every 10 steps) every epoch still has its loss: the
    mean of all its micro-batches' losses, handed to the callbacks with the saved epoch."""
    cfg = compose(
        "train.max_train_epochs=3",
        "train.batch_size=4",
        "train.gradient_accumulation_steps=3",
        "train.save_every_n_epochs=1",
    )
    assert cfg.train.log_every_n_steps == 10  # the default cadence
    losses: list[float] = []
    real_loss = loop._batch_loss

    def recording_loss(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(loop, "_batch_loss", recording_loss)
    rec, epoch_loss = Records(), EpochLoss()
    result = train_from_config(cfg, callbacks=[epoch_loss, rec])
    batches = rec.records[0].micro_batches
    assert result.global_step < 10 * 3  # fewer logged steps than epochs would need
    assert len(losses) == 3 * batches
    for record in rec.records:
        chunk = losses[(record.epoch - 1) * batches : record.epoch * batches]
        expected = sum(chunk) / len(chunk)
        assert record.loss == pytest.approx(expected, rel=1e-6)
        assert result.scores.get(record.epoch) == {"train/epoch_loss": record.loss}
        assert result.epoch_losses[record.epoch] == record.loss
    assert list(result.scores) == [1, 2, 3]
    assert all(math.isfinite(r.loss) for r in rec.records)


def test_max_train_steps_stops_mid_epoch_without_a_remainder_step(compose, monkeypatch):
    cfg = compose(
        "train.max_train_steps=5",
        "train.batch_size=3",
        "train.gradient_accumulation_steps=4",
        "data.enable_bucket=false",
    )
    result, rec, groups = _train(cfg, monkeypatch)
    assert result.global_step == 5
    batches = rec.records[0].micro_batches  # 30 samples / 3 = 10: steps of 4, 4, 2
    per_epoch = [4] * (batches // 4) + ([batches % 4] if batches % 4 else [])
    assert groups == (per_epoch * 5)[:5]
    assert rec.records[-1].is_last and rec.records[-1].step == 5


def test_log_metrics_follows_the_training_cadence_and_logs_the_last_step(compose, caplog):
    """conf/train/lora.yaml's cadence (every 10th step) over 23 steps: 10, 20, and 23."""
    import logging

    from sweeper.callbacks import LogMetrics

    cfg = compose("train.max_train_steps=23", "train.batch_size=1")
    assert cfg.train.log_every_n_steps == 10
    with caplog.at_level(logging.INFO, logger="sweeper"):
        result = train_from_config(cfg, callbacks=[LogMetrics()])
    assert result.global_step == 23
    lines = [r.getMessage() for r in caplog.records if r.name == "sweeper"]
    steps = [int(m.split()[1].rstrip(":")) for m in lines if m.startswith("step ")]
    assert steps == [10, 20, 23]
    assert all("train/loss=" in m for m in lines if m.startswith("step "))
    assert any(m.startswith("epoch ") and " saved to " in m for m in lines)

"""LR schedules from the conf/scheduler files: curves at known points, warnings, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.optim import SCHEDULERS, build_optimizer, build_scheduler, lr_metrics
from trainer.optim.schedulers import resolve_warmup_steps

CONF = Path(__file__).resolve().parents[2] / "conf"
ADAMW = {"name": "AdamW", "lr": 1e-4, "unet_lr": None, "text_encoder_lr": 5e-5, "args": {}}


def load(group: str, stem: str, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / group / f"{stem}.yaml"), overrides)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def new_optimizer(opt_cfg=ADAMW) -> torch.optim.Optimizer:
    unet = [torch.nn.Parameter(torch.ones(8, 8))]
    te = [torch.nn.Parameter(torch.ones(4))]
    return build_optimizer(opt_cfg, unet, te)


def curve(sched_cfg, total: int, opt_cfg=ADAMW) -> list[tuple[float, float]]:
    """(UNet lr, TE lr) in effect at each of the ``total`` optimizer steps, then after the last."""
    optimizer = new_optimizer(opt_cfg)
    scheduler = build_scheduler(sched_cfg, optimizer, total, opt_cfg)
    lrs = []
    for _ in range(total):
        lrs.append(tuple(g["lr"] for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    lrs.append(tuple(g["lr"] for g in optimizer.param_groups))
    return lrs


def unet(lrs: list[tuple[float, float]], step: int) -> float:
    return lrs[step][0] / 1e-4  # as a fraction of the base UNet LR


def test_every_scheduler_has_a_config_file_that_builds():
    files = sorted((CONF / "scheduler").glob("*.yaml"))
    assert {OmegaConf.load(p).name for p in files} == set(SCHEDULERS)
    for path in files:
        lrs = curve(load("scheduler", path.stem), 20)
        assert len(lrs) == 21 and all(u >= 0 for u, _ in lrs)


def test_warmup_ramps_linearly_then_holds():
    lrs = curve(load("scheduler", "constant_with_warmup", warmup_steps=4), 10)
    assert [unet(lrs, s) for s in range(6)] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1])
    assert lrs[2][1] == pytest.approx(0.5 * 5e-5)  # the TE group follows the same curve


def test_fractional_warmup_is_a_share_of_the_training_steps():
    assert resolve_warmup_steps(0.1, 50) == 5
    assert resolve_warmup_steps(7, 50) == 7
    assert resolve_warmup_steps(7.0, 50) == 7
    lrs = curve(load("scheduler", "linear", warmup_steps=0.1), 50)
    assert unet(lrs, 5) == pytest.approx(1.0)
    assert unet(lrs, 4) == pytest.approx(0.8)


def test_cosine_is_half_at_the_middle_and_zero_at_the_end():
    lrs = curve(load("scheduler", "cosine", warmup_steps=10), 110)
    assert unet(lrs, 10) == pytest.approx(1.0)
    assert unet(lrs, 60) == pytest.approx(0.5)  # half-way through the decay
    assert unet(lrs, 85) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert unet(lrs, 110) == pytest.approx(0.0, abs=1e-12)


def test_linear_reaches_zero_at_the_end():
    lrs = curve(load("scheduler", "linear"), 100)
    assert unet(lrs, 50) == pytest.approx(0.5)
    assert unet(lrs, 100) == 0.0


def test_polynomial_decays_with_its_power():
    lrs = curve(load("scheduler", "polynomial", power=2.0), 100)
    lr_end = 1e-7 / 1e-4  # diffusers' end LR, relative to the base LR
    assert unet(lrs, 50) == pytest.approx((1 - lr_end) * 0.5**2 + lr_end)
    assert unet(lrs, 90) == pytest.approx((1 - lr_end) * 0.1**2 + lr_end)
    linear = curve(load("scheduler", "polynomial", power=1.0), 100)
    assert unet(linear, 50) == pytest.approx((1 - lr_end) * 0.5 + lr_end)


def test_cosine_with_restarts_runs_its_cycles():
    lrs = curve(load("scheduler", "cosine_with_restarts", num_cycles=2), 100)
    assert unet(lrs, 0) == pytest.approx(1.0)
    assert unet(lrs, 25) == pytest.approx(0.5)
    assert unet(lrs, 49) < 0.01
    assert unet(lrs, 50) == pytest.approx(1.0)  # restart
    assert unet(lrs, 75) == pytest.approx(0.5)


def test_adafactor_ignores_the_scheduler(caplog):
    opt_cfg = load("optimizer", "adafactor")
    model = torch.nn.Linear(16, 16)
    optimizer = build_optimizer(opt_cfg, list(model.parameters()), [])
    scheduler = build_scheduler(load("scheduler", "cosine"), optimizer, 10, opt_cfg)
    expected = (
        "scheduler.cosine is ignored: AdaFactor with relative_step=True sets its own learning rate"
    )
    assert expected in caplog.text
    reported = []
    for _ in range(4):
        model(torch.ones(2, 16)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=False)
        reported.append(scheduler.get_last_lr()[0])
        assert reported[-1] == pytest.approx(lr_metrics(optimizer)["train/lr_unet"])
    assert reported == sorted(reported) and reported[0] < reported[-1]  # warmup_init: rising


@pytest.mark.parametrize(
    ("stem", "scheduler", "args", "warns"),
    [
        ("dadapt_adam", "cosine", {}, True),
        ("dadapt_adam", "constant", {}, False),
        ("prodigy", "constant_with_warmup", {"safeguard_warmup": True}, False),
        ("prodigy", "constant_with_warmup", {"safeguard_warmup": False}, True),
        ("adamw", "cosine", {}, False),
    ],
)
def test_adaptive_optimizers_warn_on_a_non_constant_schedule(
    caplog, stem: str, scheduler: str, args: dict, warns: bool
):
    opt_cfg = load("optimizer", stem, args=args)
    build_scheduler(load("scheduler", scheduler), new_optimizer(opt_cfg), 10, opt_cfg)
    assert ("the guide recommends constant" in caplog.text) is warns


def test_constant_warns_that_it_ignores_warmup(caplog):
    build_scheduler(load("scheduler", "constant", warmup_steps=5), new_optimizer(), 10, ADAMW)
    assert "warmup_steps=5 is ignored by constant" in caplog.text


def test_unknown_scheduler_lists_the_allowed_names():
    with pytest.raises(ConfigError) as info:
        build_scheduler({"name": "cosine_annealing"}, new_optimizer(), 10, ADAMW)
    assert "scheduler.name: 'cosine_annealing'" in str(info.value)
    assert all(name in str(info.value) for name in SCHEDULERS)


def test_bad_values_are_all_reported():
    cfg = {"name": "cosine_with_restarts", "warmup_steps": -3, "num_cycles": 0, "power": -1}
    with pytest.raises(ConfigError) as info:
        build_scheduler(cfg, new_optimizer(), 0, ADAMW)
    assert info.value.problems == [
        "num_training_steps: 0 must be an int >= 1",
        "scheduler.warmup_steps: -3 must be >= 0",
        "scheduler.num_cycles: 0 must be an int >= 1",
        "scheduler.power: -1 must be a number > 0",
    ]
    with pytest.raises(ConfigError, match="whole number of steps"):
        resolve_warmup_steps(1.5, 10)

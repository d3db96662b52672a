"""Optimizers from the conf/optimizer files: they build, train a small model, report LRs."""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trainer.errors import BackendMissingError, ConfigError
from trainer.optim import OPTIMIZERS, build_optimizer, describe_optimizer, is_adaptive, lr_metrics

CONF = Path(__file__).resolve().parents[2] / "conf" / "optimizer"
OPTIMIZER_FILES = sorted(CONF.glob("*.yaml"))
EIGHT_BIT = {"AdamW8bit", "Lion8bit", "SGDNesterov8bit"}
D_ADAPTIVE = {"DAdaptAdam", "DAdaptLion", "Prodigy"}


def load(stem: str, **overrides):
    """A config file as Hydra hands it over: read-only, struct mode."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{stem}.yaml"), overrides)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


class TwoPart(torch.nn.Module):
    """A stand-in for UNet + TE: the "unet" weight has 8192 elements, above bitsandbytes'
    4096-element threshold for 8-bit state, so the 8-bit code path really runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.unet = torch.nn.Linear(64, 128)
        self.te = torch.nn.Linear(16, 16)
        self.x = torch.randn(32, 64)
        self.y = torch.randn(32, 128)
        self.xt = torch.randn(32, 16)
        self.yt = torch.randn(32, 16)

    def loss(self) -> torch.Tensor:
        return ((self.unet(self.x) - self.y) ** 2).mean() + (
            (self.te(self.xt) - self.yt) ** 2
        ).mean()

    def step(self, optimizer: torch.optim.Optimizer) -> float:
        optimizer.zero_grad()
        loss = self.loss()
        loss.backward()
        optimizer.step()
        return loss.item()


def test_every_optimizer_has_a_config_file_and_back():
    names = {OmegaConf.load(path).name for path in OPTIMIZER_FILES}
    assert names == set(OPTIMIZERS)
    for path in OPTIMIZER_FILES:
        cfg = OmegaConf.load(path)
        keys = {"name", "lr", "unet_lr", "text_encoder_lr", "text_encoder_2_lr", "args"}
        assert set(cfg) == keys, path.name


@pytest.mark.parametrize("path", OPTIMIZER_FILES, ids=lambda p: p.stem)
def test_config_builds_and_trains(path: Path):
    cfg = load(path.stem)
    model = TwoPart()
    optimizer = build_optimizer(cfg, list(model.unet.parameters()), list(model.te.parameters()))
    assert [g["name"] for g in optimizer.param_groups] == ["unet", "text_encoder"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = model.step(optimizer)
    for _ in range(7):
        model.step(optimizer)
    assert model.loss().item() < first
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), f"{cfg.name} did not change {name}"
    if cfg.name in EIGHT_BIT:  # 8-bit blockwise state on the CPU, 32-bit for the small tensors
        state = optimizer.state[model.unet.weight]
        assert state["state1"].dtype == torch.uint8
        assert optimizer.state[model.te.weight]["state1"].dtype == torch.float32


@pytest.mark.parametrize("stem", ["dadapt_adam", "dadapt_lion", "prodigy"])
def test_adaptive_optimizers_report_d_and_effective_lr(stem: str):
    cfg = load(stem)
    model = TwoPart()
    optimizer = build_optimizer(cfg, list(model.unet.parameters()), list(model.te.parameters()))
    for _ in range(3):
        model.step(optimizer)
    metrics = lr_metrics(optimizer)
    d = optimizer.param_groups[0]["d"]
    assert metrics["train/d"] == pytest.approx(d) and d > 0
    assert metrics["train/lr_unet"] == metrics["train/lr_te"] == 1.0
    assert metrics["train/d_lr_unet"] == pytest.approx(d * 1.0)
    assert metrics["train/d_lr_te"] == pytest.approx(d * 1.0)


def test_fixed_lr_metrics_have_no_d():
    model = TwoPart()
    optimizer = build_optimizer(load("adamw"), list(model.unet.parameters()), [])
    model.step(optimizer)
    assert lr_metrics(optimizer) == {"train/lr_unet": 1e-4}


def test_adafactor_relative_step_reports_the_lr_it_computes():
    model = TwoPart()
    optimizer = build_optimizer(load("adafactor"), list(model.unet.parameters()), [])
    model.step(optimizer)
    model.step(optimizer)
    state = optimizer.state[model.unet.weight]
    # transformers: relative step min(1e-6 * step, 1/sqrt(step)) (warmup_init) times max(1e-3, RMS)
    expected = min(1e-6 * state["step"], 1 / math.sqrt(state["step"])) * max(1e-3, state["RMS"])
    assert lr_metrics(optimizer)["train/lr_unet"] == pytest.approx(expected)


def test_adafactor_relative_step_does_not_pass_a_configured_lr(caplog):
    caplog.set_level(logging.INFO, logger="trainer.optim.optimizers")
    model = TwoPart()
    cfg = load("adafactor", lr=1e-4, text_encoder_lr=5e-5)
    optimizer = build_optimizer(cfg, list(model.unet.parameters()), list(model.te.parameters()))
    assert optimizer.defaults["lr"] is None
    assert all(group["lr"] is None for group in optimizer.param_groups)
    assert "lr=0.0001, text_encoder_lr=5e-05 not passed" in caplog.text


def test_separate_unet_and_text_encoder_lrs_land_in_the_groups():
    model = TwoPart()
    cfg = load("adamw8bit", unet_lr=2e-4, text_encoder_lr=3e-5)
    optimizer = build_optimizer(cfg, list(model.unet.parameters()), list(model.te.parameters()))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"unet": 2e-4, "text_encoder": 3e-5}
    both_null = load("adamw", lr=3e-4, unet_lr=None, text_encoder_lr=None)
    optimizer = build_optimizer(both_null, list(model.unet.parameters()), [model.te.weight])
    assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 3e-4]


def test_empty_group_is_left_out_and_both_empty_is_an_error():
    model = TwoPart()
    optimizer = build_optimizer(load("lion"), [], list(model.te.parameters()))
    assert [g["name"] for g in optimizer.param_groups] == ["text_encoder"]
    assert set(lr_metrics(optimizer)) == {"train/lr_te"}
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(load("lion"), [], [])


@dataclass
class PlainOptimizerConfig:
    name: str = "adamw8bit"  # names match case-insensitively
    lr: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = 5e-5
    args: dict = field(default_factory=lambda: {"weight_decay": 0.01, "betas": [0.9, 0.999]})


def test_describe_optimizer_writes_kohyas_ss_optimizer():
    expected = "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.01,betas=(0.9, 0.999))"
    assert describe_optimizer(PlainOptimizerConfig()) == expected
    assert describe_optimizer(load("adamw")) == "torch.optim.adamw.AdamW"
    assert describe_optimizer({"name": "SGDNesterov", "lr": 0.1, "args": {"momentum": 0.9}}) == (
        "torch.optim.sgd.SGD(momentum=0.9)"
    )
    assert describe_optimizer(load("prodigy")).startswith("prodigyopt.prodigy.Prodigy(decouple=")


def test_is_adaptive():
    assert {p.stem for p in OPTIMIZER_FILES if is_adaptive(load(p.stem))} == {
        "dadapt_adam",
        "dadapt_lion",
        "prodigy",
        "adafactor",
    }
    fixed_adafactor = {"name": "AdaFactor", "lr": 1e-3, "args": {"relative_step": False}}
    assert is_adaptive(fixed_adafactor) is False


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(ConfigError) as info:
        build_optimizer(load("adamw", name="Adam9"), [torch.nn.Parameter(torch.zeros(2))], [])
    message = str(info.value)
    assert "optimizer.name: 'Adam9'" in message
    assert all(name in message for name in OPTIMIZERS)
    with pytest.raises(ConfigError, match="optimizer.name"):
        is_adaptive({"name": "Adam9"})


def test_every_problem_is_reported_at_once():
    cfg = load("adamw8bit", lr="fast", unet_lr=-1e-4, args={"weight_decay": 0.1, "foo": 1})
    with pytest.raises(ConfigError) as info:
        build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], [])
    problems = info.value.problems
    assert len(problems) == 3
    assert "optimizer.lr: 'fast' must be a number > 0" in problems
    assert "optimizer.unet_lr: -0.0001 must be > 0" in problems
    bad_arg = next(p for p in problems if p.startswith("optimizer.args.foo"))
    assert "bitsandbytes.optim.adamw.AdamW8bit" in bad_arg
    assert "weight_decay" in bad_arg and "betas" in bad_arg and "min_8bit_size" in bad_arg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"text_encoder_lr": 0}, "optimizer.text_encoder_lr: 0 must be > 0"),
        ({"lr": None}, "optimizer.lr: null is not allowed"),
        ({"args": {"lr": 0.1}}, "optimizer.args.lr: set by the trainer"),
        ({"args": {"betas": [1.5, 0.999]}}, "Invalid beta parameter"),  # torch's own check
    ],
)
def test_bad_values_name_the_key(overrides: dict, expected: str):
    with pytest.raises(ConfigError, match=expected):
        build_optimizer(load("adamw", **overrides), [torch.nn.Parameter(torch.zeros(2))], [])


def test_adafactor_needs_an_lr_without_relative_step():
    cfg = load("adafactor", args={"relative_step": False, "warmup_init": True})
    with pytest.raises(ConfigError) as info:
        build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], [])
    assert info.value.problems == [
        "optimizer.lr: null is not allowed; set a number > 0",
        "optimizer.args.warmup_init: true needs relative_step: true",
    ]


def test_missing_backend_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # makes `import prodigyopt` fail
    with pytest.raises(BackendMissingError, match="pip install prodigyopt") as info:
        build_optimizer(load("prodigy"), [torch.nn.Parameter(torch.zeros(2))], [])
    assert info.value.package == "prodigyopt"

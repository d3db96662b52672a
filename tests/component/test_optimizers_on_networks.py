"""Every optimizer x {LierLa, C3Lier} takes steps on the tiny model and changes the adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.models.text_encoding import encode_prompts
from trainer.models.tiny import build_tiny_components
from trainer.networks.lora import apply_lora
from trainer.optim.optimizers import build_optimizer, lr_metrics
from trainer.optim.schedulers import build_scheduler

OPTIMIZERS = sorted(
    p.stem for p in (Path(__file__).parents[2] / "conf" / "optimizer").glob("*.yaml")
)


def test_all_ten_optimizers_have_a_config():
    assert len(OPTIMIZERS) == 10


@pytest.mark.parametrize("network", ["lora", "locon"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_steps_change_every_adapter_tensor(compose, network, optimizer):
    cfg = compose(f"network={network}", f"optimizer={optimizer}")
    torch.manual_seed(0)
    c = build_tiny_components()
    for m in (c.unet, c.text_encoder, c.vae):
        m.requires_grad_(False)
    net = apply_lora(c.unet, c.text_encoder, cfg.network)
    # Up weights start at zero, which gives the down weights no gradient on the first step
    # (plain SGD at 1e-4 would then move them below fp32 resolution): start from small values.
    with torch.no_grad():
        for m in net.modules:
            m.up.normal_(0, 0.05)
    opt = build_optimizer(cfg.optimizer, net.unet_parameters(), net.text_encoder_parameters())
    sched = build_scheduler(cfg.scheduler, opt, 10, cfg.optimizer)
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randn(2, 4, 8, 8, generator=g)
    for _ in range(3):
        cond = encode_prompts(c.tokenizer, c.text_encoder, ["a cat", "a dog on a hat"])
        pred = c.unet(latents, torch.tensor([10, 600]), cond).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    unchanged = [
        i
        for i, (p, b) in enumerate(zip(params, before, strict=True))
        if torch.equal(p.detach(), b)
    ]
    assert not unchanged, f"{len(unchanged)} of {len(params)} adapter tensors did not change"
    assert all(torch.isfinite(p).all() for p in params)
    metrics = lr_metrics(opt)
    assert metrics["train/lr_unet"] > 0 or "train/d" in metrics

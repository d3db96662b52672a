"""Our kohya files load in diffusers (``pipe.load_lora_weights``, its kohya converter) with
no key dropped, and give the same UNet and text-encoder outputs as our adapted models."""

from __future__ import annotations

import re

import pytest
import torch
from load_messages import load_messages
from peft.tuners.lora import LoraLayer

from trainer.models.tiny import build_tiny_components
from trainer.networks.kohya_format import save_lora
from trainer.networks.lora import apply_lora

BASE = dict(dropout=0.0, train_unet=True, train_text_encoder=True)
# Rank != alpha and conv rank != linear rank, so that diffusers must read every alpha and
# build per-module ranks to match.
CONFIGS = {
    "lora": {**BASE, "type": "lora", "dim": 4, "alpha": 2, "conv_dim": None, "conv_alpha": None},
    "locon": {**BASE, "type": "locon", "dim": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 1},
}
# What diffusers, transformers and peft say when a LoRA key finds no module (or vice versa).
DROPPED = re.compile(r"unexpected|missing|ignored|did not match|not found|UNEXPECTED", re.I)


def _inputs(c):
    g = torch.Generator().manual_seed(7)
    ids = c.tokenizer(
        ["a photo of a cat on a rocket"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    return ids, torch.randn(2, 4, 8, 8, generator=g), torch.tensor([25, 800])


def _outputs(text_encoder, unet, inputs, hidden=None):
    ids, latents, t = inputs
    with torch.no_grad():
        te_out = text_encoder(ids)[0]
        cond = te_out if hidden is None else hidden
        return te_out, unet(latents, t, cond.expand(2, -1, -1)).sample


def _trained_file(cfg, path):
    """Adapters with random non-zero up weights, saved as a kohya file; and their outputs."""
    c = build_tiny_components(seed=0)
    net = apply_lora(c.unet, c.text_encoder, cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules:
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.05)
    save_lora(path, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    return c, net


def _peft_modules(model):
    return sum(isinstance(m, LoraLayer) for m in model.modules())


def _load_in_diffusers(path):
    pipe = build_tiny_components(seed=0).to_pipeline()
    with load_messages(future_warnings=True) as messages:
        pipe.load_lora_weights(str(path))
    return pipe, messages


@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_diffusers_loads_every_key_and_matches_outputs(kind, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    ours, net = _trained_file(CONFIGS[kind], path)
    inputs = _inputs(ours)
    want_hidden, want_out = _outputs(ours.text_encoder, ours.unet, inputs)
    base_hidden, base_out = _outputs(*_base_models(), inputs)
    # The adapters change both outputs, so a match below is not a match of base models.
    assert (want_hidden - base_hidden).abs().max() > 1e-2
    assert (want_out - base_out).abs().max() > 1e-2

    pipe, messages = _load_in_diffusers(path)
    dropped = [m for m in messages if DROPPED.search(m)]
    assert not dropped, dropped
    n_unet = sum(m.component == "unet" for m in net.modules)
    assert _peft_modules(pipe.unet) == n_unet
    assert _peft_modules(pipe.text_encoder) == net.num_modules - n_unet

    got_hidden, _ = _outputs(pipe.text_encoder, pipe.unet, inputs)
    # Same conditioning for both UNets, so the UNet comparison isolates the UNet adapters.
    _, got_out = _outputs(pipe.text_encoder, pipe.unet, inputs, hidden=want_hidden)
    assert (got_hidden - want_hidden).abs().max() <= 1e-5
    assert (got_out - want_out).abs().max() <= 1e-5


def _base_models():
    c = build_tiny_components(seed=0)
    return c.text_encoder, c.unet


def test_key_check_sees_a_dropped_key(tmp_path):
    """The log capture above works: a key for a module that does not exist is reported."""
    path = tmp_path / "bogus.safetensors"
    _, net = _trained_file(CONFIGS["lora"], path)
    sd = net.kohya_state_dict()
    name = "lora_unet_down_blocks_0_resnets_0_nowhere"
    sd.update(
        {
            f"{name}.lora_down.weight": torch.zeros(4, 32),
            f"{name}.lora_up.weight": torch.zeros(32, 4),
            f"{name}.alpha": torch.tensor(2.0),
        }
    )
    save_lora(path, sd, {})
    _, messages = _load_in_diffusers(path)
    assert any("nowhere" in m and DROPPED.search(m) for m in messages), messages

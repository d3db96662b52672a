"""Every LyCORIS network type trains through ``train_from_config`` on the tiny model, and its
saved file, loaded back with LyCORIS' loader, gives the trained model's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.models.tiny import build_tiny_components
from trainer.networks.detect import detect_network_type
from trainer.networks.kohya_format import read_lora
from trainer.networks.lycoris_load import load_lycoris_file
from trainer.run import train_from_config

SHORT = ("train.max_train_steps=2", "train.batch_size=2", "train.save_precision=float")


def _outputs(c):
    g = torch.Generator().manual_seed(5)
    ids = c.tokenizer(
        ["chelsea cat"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    latents, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50, 600])
    with torch.no_grad():
        hidden = c.text_encoder(ids)[0]
        return hidden, c.unet(latents, t, hidden.expand(2, -1, -1)).sample


@pytest.mark.parametrize("net_type", ["loha", "lokr", "ia3", "dora"])
def test_trains_saves_and_loads_back(compose, net_type, caplog):
    cfg = compose(f"network={net_type}", *SHORT)
    components = build_tiny_components(seed=cfg.model.weights_seed)
    base = _outputs(build_tiny_components(seed=cfg.model.weights_seed))
    with caplog.at_level("WARNING", logger="trainer.modes.lora"):
        result = train_from_config(cfg, components=components)  # adapters stay hooked in
    # (IA)^3 at AdamW's default 1e-4 barely moves: the run says so and what to set.
    advice = [r.getMessage() for r in caplog.records if "it needs" in r.getMessage()]
    if net_type == "ia3":
        assert len(advice) == 1
        assert "(UNet 0.0001, text encoder 5e-05) below the 0.005 to 0.01" in advice[0]
        assert "optimizer.lr=0.005" in advice[0]
    else:
        assert advice == []
    assert result.global_step == 2
    trained = _outputs(components)
    # Two steps moved the adapters off their zero-delta start.
    assert (trained[1] - base[1]).abs().max() > 1e-6

    path = result.saved[-1].path
    state, meta = read_lora(path)
    assert detect_network_type(state) == net_type
    assert meta["ss_network_module"] == "lycoris.kohya"
    algo = json.loads(meta["ss_network_args"])["algo"]
    assert algo == ("lora" if net_type == "dora" else net_type)

    fresh = build_tiny_components(seed=cfg.model.weights_seed)
    load_lycoris_file(path, fresh.unet, fresh.text_encoder)
    for got, want in zip(_outputs(fresh), trained, strict=True):
        assert (got - want).abs().max() <= 1e-5

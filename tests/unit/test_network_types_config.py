"""Network configs of every type (factory dispatch) and network-type detection from keys."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.errors import ModelLoadError
from trainer.networks.detect import check_network_type, detect_network_type
from trainer.networks.factory import network_config_problems
from trainer.settings.network import resolve_lycoris_config

COMMON = dict(dropout=0.0, train_unet=True, train_text_encoder=True)
LOHA = dict(type="loha", dim=8, alpha=4, conv_dim=4, conv_alpha=2, **COMMON)
LOKR = dict(type="lokr", dim=8, alpha=4, conv_dim=None, conv_alpha=None, factor=8, **COMMON)
IA3 = dict(type="ia3", dim=None, alpha=None, conv_dim=None, conv_alpha=None, **COMMON)
DORA = dict(type="dora", dim=8, alpha=0, conv_dim=None, conv_alpha=None, **COMMON)


@pytest.mark.parametrize("cfg", [LOHA, LOKR, IA3, DORA], ids=lambda c: c["type"])
def test_valid_configs_have_no_problems(cfg):
    assert network_config_problems(cfg) == []


def test_spec_resolves_alpha_zero_and_presets():
    assert resolve_lycoris_config(DORA).alpha == 8.0
    assert resolve_lycoris_config(LOHA).preset == "full"  # conv_dim set: 3x3 convs too
    assert resolve_lycoris_config(LOKR).preset == "full-lin"
    assert resolve_lycoris_config(IA3).preset == "ia3"


@pytest.mark.parametrize(
    ("cfg", "fragments"),
    [
        ({**IA3, "dim": 8}, ["network.dim = 8", "'ia3'"]),
        ({**LOKR, "factor": 0}, ["network.factor = 0", "-1 (balanced)"]),
        ({**LOHA, "factor": 4}, ["network.factor = 4", "only used by network.type 'lokr'"]),
        ({**DORA, "dropout": 0.1}, ["network.dropout = 0.1", "must be 0", "'dora'"]),
        ({**LOHA, "conv_dim": 0}, ["network.conv_dim = 0", "integer >= 1"]),
        ({**LOHA, "alpha": -1}, ["network.alpha = -1", ">= 0"]),
        ({**LOHA, "train_unet": False, "train_text_encoder": False}, ["both false"]),
        ({**LOHA, "type": "lycoris"}, ["network.type = 'lycoris'", "loha", "dora", "locon"]),
    ],
)
def test_bad_configs_name_key_value_and_allowed(cfg, fragments):
    problems = network_config_problems(cfg)
    assert len(problems) == 1
    for fragment in fragments:
        assert fragment in problems[0]


def test_all_problems_reported_at_once():
    problems = network_config_problems({**LOKR, "dim": 0, "factor": "x", "dropout": 2})
    assert len(problems) == 3


def test_lora_types_still_use_the_lora_rules():
    lora = dict(type="lora", dim=4, alpha=8, conv_dim=None, conv_alpha=None, **COMMON)
    assert any("exceeds network.dim" in p for p in network_config_problems(lora))


def _module(name: str, **tensors) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for k, v in tensors.items()}


M = "lora_unet_down_blocks_0_attentions_0_proj_in"
LORA_SD = _module(
    M, **{"lora_down.weight": torch.zeros(2, 8), "lora_up.weight": torch.zeros(8, 2)}
)
CONV_SD = _module(
    "lora_unet_down_blocks_0_resnets_0_conv1",
    **{"lora_down.weight": torch.zeros(2, 8, 3, 3), "lora_up.weight": torch.zeros(8, 2, 1, 1)},
)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (LORA_SD, "lora"),
        ({**LORA_SD, **CONV_SD}, "locon"),
        ({**LORA_SD, f"{M}.dora_scale": torch.ones(8, 1)}, "dora"),
        (_module(M, hada_w1_a=torch.zeros(1), hada_w1_b=torch.zeros(1)), "loha"),
        (_module(M, lokr_w1=torch.zeros(1), lokr_w2=torch.zeros(1)), "lokr"),
        (_module(M, lokr_w1_a=torch.zeros(1), lokr_w2_a=torch.zeros(1)), "lokr"),
        (_module(M, weight=torch.zeros(8), on_input=torch.tensor(0)), "ia3"),
        (_module(M, hada_w1_a=torch.zeros(1), dora_scale=torch.zeros(1)), "loha"),
        ({**LORA_SD, **_module("x", hada_w1_a=torch.zeros(1))}, "mixed"),
        (_module(M, diff=torch.zeros(1)), "full"),
    ],
)
def test_detect_network_type_from_key_suffixes(state, expected):
    assert detect_network_type(state) == expected


def test_detect_falls_back_to_metadata_when_no_key_is_known():
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha"})}
    assert detect_network_type({"x": torch.zeros(1)}, meta) == "loha"
    dora = {**meta, "ss_network_args": json.dumps({"algo": "lora", "dora_wd": "True"})}
    assert detect_network_type({}, dora) == "dora"
    assert detect_network_type({}, {}) == "unknown"


def test_check_network_type_names_file_found_and_asked_types():
    loha = _module(M, hada_w1_a=torch.zeros(1), alpha=torch.tensor(1.0))
    with pytest.raises(ModelLoadError) as err:
        check_network_type(loha, "lokr", "/data/style.safetensors")
    message = str(err.value)
    for fragment in ("/data/style.safetensors", "'loha'", "'lokr'", "hada_w1_a"):
        assert fragment in message
    # lora and locon are one family: a TE-only C3Lier file has no conv keys.
    assert check_network_type(LORA_SD, "locon", "f") == "lora"


def test_ia3_learning_rate_advice_names_the_rates_and_skips_adaptive_optimizers():
    from trainer.settings.network import learning_rate_advice, read_network

    ia3 = read_network(IA3)
    advice = learning_rate_advice(ia3, 1e-4, 5e-3, adaptive=False)
    assert advice is not None and "(UNet 0.0001) below the 0.005 to 0.01" in advice
    assert learning_rate_advice(ia3, 5e-3, 5e-3, adaptive=False) is None
    assert learning_rate_advice(ia3, 1e-4, 1e-4, adaptive=True) is None  # Prodigy: its own
    assert learning_rate_advice(read_network(LOHA), 1e-4, 1e-4, adaptive=False) is None

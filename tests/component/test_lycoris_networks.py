"""LyCORIS networks (loha, lokr, ia3, dora) on the tiny model: zero start, key formats that
WebUI/ComfyUI read, save -> LyCORIS' loader, strength, max-norm, and wrong-type loads."""

from __future__ import annotations

import pytest
import torch
from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

from trainer.errors import ModelLoadError
from trainer.models.tiny import build_tiny_components
from trainer.networks.detect import detect_network_type
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import read_lora, save_lora
from trainer.networks.lycoris_load import load_lycoris_file
from trainer.networks.lycoris_net import EMPTY_PRESET, text_root

COMMON = dict(dropout=0.0, train_unet=True, train_text_encoder=True)
CONFIGS = {
    "loha": dict(type="loha", dim=4, alpha=2, conv_dim=2, conv_alpha=1, **COMMON),
    # dim 2 < half of w2's side: w2 stays factored (lokr_w2_a / lokr_w2_b).
    "lokr": dict(type="lokr", dim=2, alpha=2, conv_dim=None, conv_alpha=None, factor=4, **COMMON),
    "ia3": dict(type="ia3", dim=None, alpha=None, conv_dim=None, conv_alpha=None, **COMMON),
    "dora": dict(type="dora", dim=4, alpha=2, conv_dim=2, conv_alpha=2, **COMMON),
}
SUFFIXES = {
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "ia3": {"weight", "on_input"},
    "dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
}
TYPES = list(CONFIGS)
LORA = dict(type="lora", dim=4, alpha=1, conv_dim=None, conv_alpha=None, **COMMON)


def _inputs(c):
    g = torch.Generator().manual_seed(123)
    ids = c.tokenizer(
        ["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    return ids, torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])


def _outputs(c, inputs):
    ids, latents, t = inputs
    with torch.no_grad():
        hidden = c.text_encoder(ids)[0]
        return hidden, c.unet(latents, t, hidden.expand(2, -1, -1)).sample


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _trained(net_type, seed=0):
    """A built network whose weights were moved away from their zero-delta start."""
    c = build_tiny_components(seed=seed)
    net = build_network(c.unet, c.text_encoder, CONFIGS[net_type])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.unet_parameters() + net.text_encoder_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return c, net


@pytest.fixture(scope="module")
def base_outputs():
    c = build_tiny_components(seed=0)
    return _outputs(c, _inputs(c))


@pytest.mark.parametrize("net_type", TYPES)
def test_starts_as_the_base_model_and_trains_only_adapters(net_type, base_outputs):
    c = build_tiny_components(seed=0)
    net = build_network(c.unet, c.text_encoder, CONFIGS[net_type])
    # DoRA renormalises W by ||W|| (+ eps): equal to float precision, not bit for bit.
    assert _max_diff(_outputs(c, _inputs(c)), base_outputs) <= 1e-5
    params = net.unet_parameters() + net.text_encoder_parameters()
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in c.unet.parameters())
    assert not any(p.requires_grad for p in c.text_encoder.parameters())
    assert net.num_modules == len({k.split(".")[0] for k in net.kohya_state_dict()})


@pytest.mark.parametrize("net_type", TYPES)
def test_keys_are_in_the_lycoris_webui_format(net_type):
    _, net = _trained(net_type)
    sd = net.kohya_state_dict()
    assert {k.split(".", 1)[1] for k in sd} == SUFFIXES[net_type]
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in sd)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in sd)
    assert detect_network_type(sd) == net_type
    info = net.kohya_info()
    assert info["network_module"] == "lycoris.kohya"
    assert info["network_args"]["algo"] == ("lora" if net_type == "dora" else net_type)
    if net_type == "ia3":  # keys/values scaled on their output, ff.net.2 / fc2 on the input
        on_input = {k.split(".")[0]: int(v) for k, v in sd.items() if k.endswith("on_input")}
        assert {n for n, v in on_input.items() if v} == {
            n for n in on_input if n.endswith(("ff_net_2", "mlp_fc2"))
        }


@pytest.mark.parametrize("net_type", TYPES)
def test_save_then_load_with_lycoris_gives_the_adapted_outputs(net_type, tmp_path):
    c, net = _trained(net_type)
    adapted = _outputs(c, _inputs(c))
    path = tmp_path / f"{net_type}.safetensors"
    save_lora(path, net.kohya_state_dict(), {"ss_network_module": "lycoris.kohya"})

    fresh = build_tiny_components(seed=0)
    if net_type in ("ia3", "dora"):
        # lycoris-lora 4.1.3 rebuilds neither IA3 modules nor DoRA with a per-input magnitude
        load_lycoris_file(path, fresh.unet, fresh.text_encoder)
    else:  # LyCORIS' own loader, as kohya's scripts call it
        LycorisNetworkKohya.apply_preset(EMPTY_PRESET)
        root = text_root(fresh.text_encoder)
        loaded, _ = create_network_from_weights(
            1.0, None, None, root, fresh.unet, weights_sd=read_lora(path)[0]
        )
        loaded.apply_to(root, fresh.unet, apply_text_encoder=True, apply_unet=True)
    assert _max_diff(_outputs(fresh, _inputs(fresh)), adapted) <= 1e-5

    again = build_tiny_components(seed=0)
    rebuilt = build_network(again.unet, again.text_encoder, CONFIGS[net_type])
    rebuilt.load_kohya_state_dict(read_lora(path)[0], str(path))
    assert _max_diff(_outputs(again, _inputs(again)), adapted) <= 1e-5


@pytest.mark.parametrize("net_type", ["loha", "dora"])
def test_strength_zero_is_the_base_model(net_type, base_outputs):
    c, net = _trained(net_type)
    adapted = _outputs(c, _inputs(c))
    assert _max_diff(adapted, base_outputs) > 1e-3
    net.set_scale(0.0, 0.0)
    assert _max_diff(_outputs(c, _inputs(c)), base_outputs) <= 1e-5
    net.set_scale(1.0, 1.0)
    assert _max_diff(_outputs(c, _inputs(c)), adapted) <= 1e-6


def test_max_norm_caps_norms_and_ia3_reports_none():
    _, loha = _trained("loha")
    scaled, mean_norm, max_norm = (float(v) for v in loha.apply_max_norm(0.05))
    assert scaled > 0 and max_norm <= 0.05 + 1e-6 and 0 < mean_norm <= max_norm
    # The cap is saved: the state dict folds LyCORIS' scalar into the weights.
    c = build_tiny_components(seed=0)
    again = build_network(c.unet, c.text_encoder, CONFIGS["loha"])
    again.load_kohya_state_dict(loha.kohya_state_dict())
    # A cap far above every norm scales nothing and reports the norms as they are.
    assert float(again.apply_max_norm(1e6)[2]) == pytest.approx(max_norm, rel=1e-5)
    _, ia3 = _trained("ia3")
    assert ia3.apply_max_norm(0.05) == (0, 0.0, 0.0)


@pytest.mark.parametrize(("saved", "asked"), [("loha", "lokr"), ("dora", "lora"), ("lora", "ia3")])
def test_loading_a_file_of_another_type_names_file_and_both_types(saved, asked, tmp_path):
    if saved == "lora":
        c = build_tiny_components(seed=0)
        net = build_network(c.unet, c.text_encoder, LORA)
    else:
        _, net = _trained(saved)
    path = tmp_path / f"{saved}.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    c = build_tiny_components(seed=0)
    target = build_network(c.unet, c.text_encoder, LORA if asked == "lora" else CONFIGS[asked])
    with pytest.raises(ModelLoadError) as err:
        target.load_kohya_state_dict(read_lora(path)[0], str(path))
    message = str(err.value)
    assert str(path) in message and f"'{saved}'" in message and f"'{asked}'" in message
    with pytest.raises(ModelLoadError, match=f"holds a '{saved}' network"):
        load_lycoris_file(path, c.unet, c.text_encoder, expected_type=asked)


def test_loader_refuses_modules_the_model_does_not_have(tmp_path):
    _, net = _trained("loha")
    sd = net.kohya_state_dict()
    sd["lora_unet_no_such_block_to_q.hada_w1_a"] = torch.zeros(1)
    path = tmp_path / "other.safetensors"
    save_lora(path, sd, {})
    c = build_tiny_components(seed=0)
    with pytest.raises(ModelLoadError, match="lora_unet_no_such_block_to_q"):
        load_lycoris_file(path, c.unet, c.text_encoder)


def test_the_lycoris_loader_also_reads_kohya_lora_files(tmp_path):
    """One loader for evaluation, whatever the type: kohya LoCon files load through LyCORIS'
    LoCon modules and match the peft network, at strength 1 and at 0.3."""
    c = build_tiny_components(seed=0)
    net = build_network(
        c.unet, c.text_encoder, {**LORA, "type": "locon", "conv_dim": 2, "conv_alpha": 1}
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.unet_parameters() + net.text_encoder_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    path = tmp_path / "locon.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    fresh = build_tiny_components(seed=0)
    loaded = load_lycoris_file(path, fresh.unet, fresh.text_encoder)
    assert _max_diff(_outputs(fresh, _inputs(fresh)), _outputs(c, _inputs(c))) <= 1e-5
    net.set_scale(0.3, 0.3)
    loaded.set_multiplier(0.3)
    assert _max_diff(_outputs(fresh, _inputs(fresh)), _outputs(c, _inputs(c))) <= 1e-5

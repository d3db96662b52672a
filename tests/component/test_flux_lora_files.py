"""Flux LoRA files where they are used: kohya's BFL names and fused shapes in the file,
diffusers' ``FluxPipeline.load_lora_weights`` reads every key and computes what training
computed, our network reads its own file back, and the evaluation slot hot-swaps it.

diffusers' kohya-Flux converter splits ``single_blocks.N.linear1`` at FLUX.1's own widths
(3 x 3072 + 12288, hard-coded), so the consumer test of single blocks runs on a one-block
transformer of FLUX.1's width; the double blocks (split by thirds) and CLIP-L run on the tiny
model without its single block."""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from flux_outputs import PROMPT, flux_outputs, max_diff
from load_messages import load_messages
from peft.tuners.lora import LoraLayer

from evaluators.lora_swap import slot_for
from trainer.errors import ModelLoadError
from trainer.families import family_of
from trainer.models.flux import TINY_TRANSFORMER_CONFIG, build_tiny_flux_components
from trainer.networks.factory import build_network
from trainer.networks.fused_modules import fuse_parts, split_parts
from trainer.networks.kohya_format import read_lora, save_lora

NETWORK = dict(type="lora", dim=4, alpha=2, conv_dim=None, conv_alpha=None, dropout=0.0,
               train_unet=True, train_text_encoder=True)  # fmt: skip
TOLERANCE = 1e-5


def _save(folder, net):
    path = folder / "a.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    return path


# Transformers diffusers' converter can read: the tiny one's double block only, and one single
# block at FLUX.1's width (24 heads of 128).
DOUBLE_ONLY = {**TINY_TRANSFORMER_CONFIG, "num_single_layers": 0}
WIDE_SINGLE = {**TINY_TRANSFORMER_CONFIG, "num_layers": 0, "attention_head_dim": 128,
               "num_attention_heads": 24, "axes_dims_rope": [16, 56, 56]}  # fmt: skip


@functools.cache
def _transformer(config: tuple):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(**dict(config)).eval()


def _model(config: dict | None = None):
    """tiny_flux, or tiny_flux's encoders and VAE with another (seeded) transformer."""
    c = build_tiny_flux_components(seed=0)
    if config is None:
        return c
    frozen = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(config.items()))
    return dataclasses.replace(c, transformer=copy.deepcopy(_transformer(frozen)))


def _trained(config: dict | None = None):
    """Tiny Flux with a LoRA trained one optimizer step (every adapter moves off zero)."""
    c = _model(config)
    family = family_of(c)
    net = build_network(c.transformer, family.text_encoders(c), NETWORK, family)
    optimizer = torch.optim.AdamW(
        net.unet_parameters() + net.text_encoder_parameters(), lr=0.05, weight_decay=0.0
    )
    cond = family.condition_batch(
        c, family.encode_prompts(c, PROMPT * 2, max_token_length=75, clip_skip=1), {}
    )
    g = torch.Generator().manual_seed(2)
    latents, sigmas = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.7])
    target = torch.randn(latents.shape, generator=g)
    F.mse_loss(family.predict(c.transformer, latents, sigmas, cond), target).backward()
    optimizer.step()
    return c, net


def test_the_file_has_kohya_flux_names_with_bfl_fused_shapes(tmp_path):
    c, net = _trained()
    path = _save(tmp_path, net)
    state_dict, _ = read_lora(path)
    modules = {k.split(".")[0] for k in state_dict}
    unet = sorted(m for m in modules if m.startswith("lora_unet_"))
    double = (
        "img_attn_proj",
        "img_attn_qkv",
        "img_mlp_0",
        "img_mlp_2",
        "img_mod_lin",
        "txt_attn_proj",
        "txt_attn_qkv",
        "txt_mlp_0",
        "txt_mlp_2",
        "txt_mod_lin",
    )
    single = ("linear1", "linear2", "modulation_lin")
    assert unet == sorted(f"lora_unet_double_blocks_0_{m}" for m in double) + [
        f"lora_unet_single_blocks_0_{m}" for m in single
    ]
    assert sum(m.startswith("lora_te1_text_model_encoder_layers_") for m in modules) == 12
    hidden = 32  # the tiny transformer's inner width (2 heads x 16)
    # BFL's qkv: one Linear of 3 x hidden outputs; linear1: qkv + the 4x MLP input.
    assert state_dict["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (
        3 * hidden, 3 * 4,
    )  # fmt: skip
    assert state_dict["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (
        12, hidden,
    )  # fmt: skip
    assert state_dict["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (
        3 * hidden + 4 * hidden, 4 * 4,
    )  # fmt: skip
    # alpha / rank of a fused module is its parts' (2 / 4): the delta is what training made.
    assert float(state_dict["lora_unet_single_blocks_0_linear1.alpha"]) == 8.0
    assert float(state_dict["lora_unet_double_blocks_0_img_mod_lin.alpha"]) == 2.0


@pytest.mark.parametrize(("config", "unet_modules"), [(DOUBLE_ONLY, 14), (WIDE_SINGLE, 6)])
def test_diffusers_flux_reads_every_key_and_computes_our_outputs(config, unet_modules, tmp_path):
    c, net = _trained(config)
    ours = flux_outputs(c)
    path = _save(tmp_path, net)
    state_dict, _ = read_lora(path)
    fresh = _model(config)
    base = flux_outputs(fresh)
    pipe = fresh.to_pipeline()
    with load_messages() as messages:
        pipe.load_lora_weights(dict(state_dict), adapter_name="consumer")
    assert messages == []
    # Zero dropped keys: diffusers splits each fused module into the layers we trained.
    wrapped = sum(isinstance(m, LoraLayer) for m in fresh.transformer.modules())
    assert wrapped == sum(m.component == "unet" for m in net.modules) == unet_modules
    wrapped_te = sum(isinstance(m, LoraLayer) for m in fresh.text_encoder.modules())
    assert wrapped_te == sum(m.component == "text_encoder" for m in net.modules)
    got = flux_outputs(fresh)
    assert max_diff(got, base) > 1e-3  # the file changed the model
    assert max_diff(got, ours) <= TOLERANCE


def test_our_network_reads_its_own_file_back(tmp_path):
    c, net = _trained()
    path = _save(tmp_path, net)
    fresh = build_tiny_flux_components(seed=0)
    family = family_of(fresh)
    other = build_network(fresh.transformer, family.text_encoders(fresh), NETWORK, family)
    other.load_kohya_state_dict(read_lora(path)[0], source=str(path))
    assert max_diff(flux_outputs(fresh), flux_outputs(c)) <= TOLERANCE


def test_a_fused_module_that_is_not_block_diagonal_is_refused_naming_it():
    tensors = {"lora_down.weight": (2, 5), "lora_up.weight": (4, 2)}
    parts = {f"m_part{i}.{k}": torch.randn(s) for i in range(3) for k, s in tensors.items()}
    parts.update({f"m_part{i}.alpha": torch.tensor(1.0) for i in range(3)})
    fused = fuse_parts(parts)
    assert torch.equal(split_parts(fused, {"m": [4, 4, 4]}, "f")["m_part1.lora_up.weight"],
                       parts["m_part1.lora_up.weight"])  # fmt: skip
    fused["m.lora_up.weight"] = torch.randn(12, 6)  # kohya's own qkv: one shared down
    with pytest.raises(ModelLoadError, match="m is not 3 block-diagonal parts"):
        split_parts(fused, {"m": [4, 4, 4]}, "f")


def test_evaluation_slot_hot_swaps_a_flux_lora_at_strengths(tmp_path):
    """tiny_flux itself (single block included): the slot hands diffusers its own format."""
    c, net = _trained()
    ours = flux_outputs(c)
    path = _save(tmp_path, net)
    base_model = _model()
    base = flux_outputs(base_model)
    slot = slot_for(base_model)
    slot.load(path)
    assert set(slot.parts) == {"unet", "text_encoder"}
    assert max_diff(flux_outputs(base_model), ours) <= TOLERANCE
    slot.set_strength(1.0, 0.0)  # the transformer's part only
    pooled, t5, pred = flux_outputs(base_model)
    assert torch.equal(pooled, base[0]) and torch.equal(t5, base[1])
    assert float((pred - base[2]).abs().max()) > 1e-3
    slot.set_strength(0.0, 0.0)
    assert max_diff(flux_outputs(base_model), base) <= TOLERANCE
    slot.unload()
    assert max_diff(flux_outputs(base_model), base) <= TOLERANCE

"""LyCORIS files for Flux (LoKr first): one module per diffusers layer of the transformer, named
``lycoris_`` + the diffusers path, as ComfyUI's Flux key map reads LyCORIS files
(``comfy/lora.py`` ``model_lora_keys_unet``: ``lycoris_`` + each key of
``comfy.utils.flux_to_diffusers``, a slice of BFL's weight where BFL fuses the layers), and
CLIP-L as ``lora_te1_``; our loader reads the file back and computes what training computed.

ComfyUI is not installed here: its key map is asserted as the names it lists (below)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flux_outputs import PROMPT, flux_outputs, max_diff

from evaluators.lora_swap import slot_for
from trainer.errors import ConfigError, ModelLoadError
from trainer.families import family_of
from trainer.models.flux import build_tiny_flux_components
from trainer.networks.factory import build_network
from trainer.networks.kohya_format import read_lora, save_lora
from trainer.networks.lycoris_load import load_lycoris_state_dict

TOLERANCE = 1e-5
# dim 2 < half of w2's side: LoKr factors w2 (lokr_w2_a @ lokr_w2_b), so alpha / dim counts.
NETWORKS = {
    "lokr": dict(type="lokr", dim=2, alpha=1, factor=4),
    "loha": dict(type="loha", dim=4, alpha=2, factor=None),
    "dora": dict(type="dora", dim=4, alpha=2, factor=None),
}
COMMON = dict(conv_dim=None, conv_alpha=None, dropout=0.0, train_unet=True,
              train_text_encoder=True)  # fmt: skip

# The diffusers layers of ComfyUI's Flux key map (comfy.utils.flux_to_diffusers) that are
# Linear weights of a double- / single-stream block; ComfyUI reads them as lycoris_<path>.
COMFY_DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_out.0", "norm1.linear", "norm1_context.linear",
                "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")  # fmt: skip
COMFY_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "norm.linear", "proj_out")
# ComfyUI's CLIP-L names (comfy/lora.py model_lora_keys_clip, LORA_CLIP_MAP).
COMFY_CLIP = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
              "mlp_fc1", "mlp_fc2")  # fmt: skip


def _comfy_flux_names(double: int, single: int) -> set[str]:
    names = {f"transformer_blocks.{i}.{p}" for i in range(double) for p in COMFY_DOUBLE}
    names |= {f"single_transformer_blocks.{i}.{p}" for i in range(single) for p in COMFY_SINGLE}
    return {"lycoris_" + n.replace(".", "_") for n in names}


def _network(c, net_type: str):
    family = family_of(c)
    spec = {**NETWORKS[net_type], **COMMON}
    return build_network(c.transformer, family.text_encoders(c), spec, family)


def _trained(net_type: str):
    """tiny_flux with a LyCORIS network trained one optimizer step."""
    c = build_tiny_flux_components(seed=0)
    family = family_of(c)
    net = _network(c, net_type)
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


def _saved(tmp_path, net):
    path = tmp_path / "lyco.safetensors"
    save_lora(path, net.kohya_state_dict(), {})
    return path


def test_a_flux_lokr_file_has_the_names_comfyuis_flux_key_map_reads(tmp_path):
    c, net = _trained("lokr")
    state_dict, _ = read_lora(_saved(tmp_path, net))
    modules = {k.split(".")[0] for k in state_dict}
    transformer = {m for m in modules if not m.startswith("lora_te1_")}
    # One module per Linear layer kohya's Flux LoRA adapts (the same layers), each in the map.
    targets = family_of(c).lora_targets("unet", c.transformer, with_conv=False)
    assert transformer == {"lycoris_" + p.replace(".", "_") for p in targets}
    assert transformer == _comfy_flux_names(double=1, single=1)
    clip = {m for m in modules if m.startswith("lora_te1_")}
    layers = c.text_encoder.config.num_hidden_layers
    assert clip == {f"lora_te1_text_model_encoder_layers_{i}_{p}" for i in range(layers)
                    for p in COMFY_CLIP}  # fmt: skip
    # LoKr's tensors: w1 whole, w2 factored at rank 2, alpha.
    name = "lycoris_transformer_blocks_0_attn_to_q"
    assert {k for k in state_dict if k.startswith(name + ".")} == {
        f"{name}.{s}" for s in ("lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha")
    }
    assert state_dict[f"{name}.lokr_w2_a"].shape[1] == 2
    assert float(state_dict[f"{name}.alpha"]) == 1.0
    assert all(float(v.abs().max()) > 0 for k, v in state_dict.items() if "lokr_w2_b" in k)


@pytest.mark.parametrize("net_type", list(NETWORKS))
def test_our_loader_reads_a_flux_lycoris_file_and_computes_what_training_did(net_type, tmp_path):
    c, net = _trained(net_type)
    ours = flux_outputs(c)
    path = _saved(tmp_path, net)
    state_dict, _ = read_lora(path)
    fresh = build_tiny_flux_components(seed=0)
    base = flux_outputs(fresh)
    family = family_of(fresh)
    loaded = load_lycoris_state_dict(
        state_dict, fresh.transformer, family.text_encoders(fresh), source=str(path),
        expected_type=net_type, family=family,
    )  # fmt: skip
    assert len(loaded.unet_loras) == 20 and len(loaded.text_encoder_loras) == 12
    got = flux_outputs(fresh)
    assert max_diff(got, base) > 1e-3  # the file changed the model
    assert max_diff(got, ours) <= TOLERANCE
    # The training network reads its own file back too (a resumed run).
    again = build_tiny_flux_components(seed=0)
    _network(again, net_type).load_kohya_state_dict(state_dict, source=str(path))
    assert max_diff(flux_outputs(again), ours) <= TOLERANCE


def test_the_evaluation_slot_hot_swaps_a_flux_lokr_file(tmp_path):
    c, net = _trained("lokr")
    ours = flux_outputs(c)
    path = _saved(tmp_path, net)
    model = build_tiny_flux_components(seed=0)
    base = flux_outputs(model)
    slot = slot_for(model)
    slot.load(path)
    assert set(slot.parts) == {"unet", "text_encoder"}
    assert max_diff(flux_outputs(model), ours) <= TOLERANCE
    slot.set_strength(1.0, 0.0)
    pooled, t5, pred = flux_outputs(model)
    assert torch.equal(pooled, base[0]) and torch.equal(t5, base[1])
    assert float((pred - base[2]).abs().max()) > 1e-3
    slot.unload()
    assert max_diff(flux_outputs(model), base) <= TOLERANCE


def test_a_flux_lycoris_module_with_no_such_layer_is_reported_not_skipped(tmp_path):
    c, net = _trained("lokr")
    state_dict = dict(net.kohya_state_dict())
    for key in [k for k in state_dict if k.startswith("lycoris_transformer_blocks_0_ff_net_2.")]:
        state_dict[key.replace("blocks_0_", "blocks_7_")] = state_dict.pop(key)
    fresh = build_tiny_flux_components(seed=0)
    family = family_of(fresh)
    with pytest.raises(ModelLoadError, match="lycoris_transformer_blocks_7_ff_net_2"):
        load_lycoris_state_dict(
            state_dict, fresh.transformer, family.text_encoders(fresh), family=family
        )


def test_ia3_on_flux_is_refused_naming_what_is_allowed():
    c = build_tiny_flux_components(seed=0)
    family = family_of(c)
    spec = dict(type="ia3", dim=None, alpha=None, factor=None, **{**COMMON})
    allowed = r"'ia3' is not allowed for model.family flux; allowed: lora, lokr, loha, dora"
    with pytest.raises(ConfigError, match=allowed):
        build_network(c.transformer, family.text_encoders(c), spec, family)

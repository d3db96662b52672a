"""The Flux family against diffusers and kohya's numbers: conditioning as ``FluxPipeline``
encodes it, packed latents, the rectified-flow objective, the sigma samplers, loss weights,
BFL module names, the flow keys' checks, and FLUX.1-dev's shapes (meta device)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.training_utils import compute_loss_weighting_for_sd3

from trainer.errors import ConfigError
from trainer.families import family_of, get_family
from trainer.families.flux import bfl_module, flux_mu, pack_latents, sample_sigmas, unpack_latents
from trainer.models.flux import build_flux_shape_components, build_tiny_flux_components
from trainer.settings.flow import FlowSettings
from trainer.settings.model import read_model_settings

PROMPTS = ["a photo of a cat", "a red house by the sea, at dusk"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_flux_components(seed=0, flow=FlowSettings(t5_max_token_length=32))


def test_conditioning_is_what_flux_pipeline_encodes(tiny):
    family = family_of(tiny)
    with torch.no_grad():
        ours = family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1)
        embeds, pooled, text_ids = tiny.to_pipeline().encode_prompt(
            PROMPTS, PROMPTS, max_sequence_length=32
        )
    assert torch.equal(ours.hidden_states, embeds)
    assert torch.equal(ours.extra["pooled_projections"], pooled)
    assert torch.equal(ours.extra["txt_ids"][0], text_ids)
    # The offline T5 tokenizer: T5's ids (</s> = 1 ends the words, <pad> = 0 fills).
    ids = tiny.tokenizer_2("a photo", padding="max_length", max_length=6).input_ids
    assert ids[2:] == [1, 0, 0, 0] and all(i > 2 for i in ids[:2])


def test_dev_guidance_input_is_the_configured_scale(tiny):
    family = family_of(tiny)
    cond = family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1)
    assert torch.equal(family.condition_batch(tiny, cond, {}).extra["guidance"], torch.ones(2))


def test_packing_is_diffusers_and_round_trips():
    latents = torch.randn(2, 16, 6, 8)
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 64)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 48, 64, 8), latents)
    assert torch.equal(unpack_latents(packed, 6, 8), latents)


def test_objective_is_rectified_flow_with_the_schedulers_noising(tiny):
    family = get_family("flux")
    latents, noise = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    sigmas = torch.tensor([0.1, 0.5, 0.95])
    noisy = family.add_noise(tiny, latents, noise, sigmas)
    scheduler = FlowMatchEulerDiscreteScheduler()
    for i in range(3):
        expected = scheduler.scale_noise(
            latents[i : i + 1], sigmas[i : i + 1] * 1000, noise[i : i + 1]
        )
        assert torch.allclose(noisy[i : i + 1], expected, atol=1e-6)
    assert torch.equal(family.training_target(tiny, latents, noise, sigmas), noise - latents)


def test_predict_packs_and_unpacks_around_the_transformer(tiny):
    family = family_of(tiny)
    with torch.no_grad():
        cond = family.condition_batch(
            tiny, family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1), {}
        )
        latents, sigmas = torch.randn(2, 16, 4, 6), torch.tensor([0.3, 0.8])
        ours = family.predict(tiny.transformer, latents, sigmas, cond)
        # The pipeline's own call (FluxPipeline.__call__): timestep / 1000, guidance, ids.
        ids = FluxPipeline._prepare_latent_image_ids(1, 2, 3, "cpu", torch.float32)
        direct = tiny.transformer(
            hidden_states=FluxPipeline._pack_latents(latents, 2, 16, 4, 6), timestep=sigmas,
            guidance=torch.ones(2), pooled_projections=cond.extra["pooled_projections"],
            encoder_hidden_states=cond.hidden_states, txt_ids=cond.extra["txt_ids"][0],
            img_ids=ids, return_dict=False,
        )[0]  # fmt: skip
    assert torch.equal(ours, FluxPipeline._unpack_latents(direct, 32, 48, 8))


def test_latents_that_do_not_pack_are_refused_naming_the_bucket_step(tiny):
    family = family_of(tiny)
    cond = family.condition_batch(
        tiny, family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1), {}
    )
    with pytest.raises(ValueError, match="data.bucket_reso_steps: a multiple of 16"):
        family.predict(tiny.transformer, torch.randn(2, 16, 5, 6), torch.tensor([0.5, 0.5]), cond)


def test_sigma_samplers_follow_kohyas_formulas():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    s = torch.sigmoid(normal)
    shifted = sample_sigmas(FlowSettings(timestep_sampling="shift"), 4096, g, None)
    assert torch.allclose(shifted, 3.1582 * s / (1 + 2.1582 * s))
    assert float(shifted.mean()) > 0.65  # shifted towards noise
    g = torch.Generator().manual_seed(0)
    flux = sample_sigmas(FlowSettings(timestep_sampling="flux_shift"), 4096, g, (1, 16, 128, 128))
    # 1024 px -> 64 x 64 packed tokens -> mu = 1.15 (BFL's 4096-token end of the line).
    assert flux_mu(4096) == pytest.approx(1.15) and flux_mu(256) == pytest.approx(0.5)
    expected = FlowMatchEulerDiscreteScheduler().time_shift(1.15, 1.0, s)
    assert torch.allclose(flux, expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    uniform = sample_sigmas(FlowSettings(timestep_sampling="uniform"), 4096, g, None)
    assert float(uniform.min()) >= 0.0 and float(uniform.max()) < 1.0
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("scheme", ["none", "sigma_sqrt", "cosmap"])
def test_loss_weights_are_sd3s(tiny, scheme):
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    flow = FlowSettings(loss_weighting=scheme)
    weights = get_family("flux").loss_weights(_with_flow(tiny, flow), sigmas, None)
    assert torch.allclose(weights, compute_loss_weighting_for_sd3(scheme, sigmas).float())


def _with_flow(components, flow):
    import dataclasses

    return dataclasses.replace(components, flow=flow)


def test_every_block_linear_has_its_bfl_name(tiny):
    family = family_of(tiny)
    targets = family.lora_targets("unet", tiny.transformer, with_conv=False)
    assert len(targets) == 20
    assert bfl_module("transformer_blocks.3.attn.add_k_proj") == (
        "double_blocks.3.txt_attn.qkv",
        1,
    )
    assert bfl_module("single_transformer_blocks.7.proj_mlp") == ("single_blocks.7.linear1", 3)
    names = {family.kohya_module_name("unet", p) for p in targets}
    assert "lora_unet_double_blocks_0_img_mod_lin" in names
    assert "lora_unet_single_blocks_0_linear1_part3" in names
    assert family.kohya_module_name("text_encoder", "encoder.layers.0.mlp.fc1") == (
        "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    )


def test_flow_keys_are_checked_naming_key_value_and_allowed():
    bad = {
        "family": "flux", "path": "tiny_flux", "timestep_sampling": "sigma",
        "guidance_scale": "high", "t5_max_token_length": 0, "discrete_flow_shift": -1,
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        read_model_settings(bad)
    text = str(caught.value)
    assert "model.timestep_sampling: 'sigma' is not allowed; allowed: uniform, sigmoid" in text
    assert "model.guidance_scale: 'high' is not allowed; allowed: a number" in text
    assert "model.t5_max_token_length: 0 is not allowed" in text
    assert "model.discrete_flow_shift: -1 is not allowed; allowed: a number > 0" in text
    ok = read_model_settings({"family": "flux", "path": "tiny_flux"})
    assert ok.flow == FlowSettings()


def test_a_single_file_transformer_needs_the_other_parts(tmp_path):
    transformer = tmp_path / "flux1-dev.safetensors"
    transformer.write_bytes(b"")
    with pytest.raises(ConfigError, match="model.components: None is not allowed when"):
        read_model_settings({"family": "flux", "path": str(transformer)})
    got = read_model_settings(
        {"family": "flux", "path": str(transformer), "components": "black-forest-labs/FLUX.1-dev"}
    )
    assert got.components == "black-forest-labs/FLUX.1-dev"


def test_flux_shape_is_flux1_dev_on_the_meta_device():
    c = build_flux_shape_components(device="meta")
    modules = {"transformer": c.transformer, "t5": c.text_encoder_2, "clip": c.text_encoder}
    count = {n: sum(p.numel() for p in m.parameters()) for n, m in modules.items()}
    # FLUX.1-dev's published sizes: 11.9B transformer, T5 v1.1 XXL encoder 4.76B, CLIP-L 123M.
    assert math.isclose(count["transformer"], 11.9e9, rel_tol=0.01)
    assert math.isclose(count["t5"], 4.76e9, rel_tol=0.01)
    assert math.isclose(count["clip"], 123e6, rel_tol=0.01)
    assert c.vae.config.latent_channels == 16 and c.vae.config.shift_factor == 0.1159


def test_a_diffusers_flux_folder_loads_with_its_tokenizers_and_settings(tiny, tmp_path):
    from trainer.models.loading import load_model

    tiny.to_pipeline().save_pretrained(tmp_path / "flux")
    loaded = load_model(
        {"family": "flux", "path": str(tmp_path / "flux"), "t5_max_token_length": 32,
         "timestep_sampling": "flux_shift"},
        tmp_path / "cache",
    )  # fmt: skip
    assert loaded.flow.timestep_sampling == "flux_shift"
    family = family_of(loaded)
    with torch.no_grad():
        ours = family.encode_prompts(loaded, PROMPTS, max_token_length=75, clip_skip=1)
        theirs = family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1)
    assert torch.equal(ours.hidden_states, theirs.hidden_states)
    assert torch.equal(ours.extra["pooled_projections"], theirs.extra["pooled_projections"])
    for a, b in zip(
        loaded.transformer.state_dict().values(), tiny.transformer.state_dict().values()
    ):
        assert torch.equal(a, b)
    assert loaded.vae.config.shift_factor == tiny.vae.config.shift_factor


def test_frozen_t5_states_are_computed_once_per_prompt_while_clip_trains(tiny):
    family = family_of(tiny)
    calls = []
    hook = tiny.text_encoder_2.register_forward_hook(lambda m, i, o: calls.append(i))
    try:
        tiny.text_encoder_2.requires_grad_(False)  # as every run freezes it
        tiny.extra.pop("t5_states", None)
        with torch.no_grad():
            fresh = family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1)
        first = family.encode_prompts(tiny, PROMPTS, max_token_length=75, clip_skip=1)
        again = family.encode_prompts(tiny, PROMPTS[::-1], max_token_length=75, clip_skip=1)
    finally:
        hook.remove()
    assert len(calls) == 2  # the no-grad encoding, then once for both prompts
    assert torch.equal(first.hidden_states, fresh.hidden_states)
    assert torch.equal(again.hidden_states, fresh.hidden_states.flip(0))


def test_the_bfl_layout_we_write_is_what_diffusers_single_file_reader_reads():
    """FLUX.1's widths (diffusers' converter hard-codes them), one block of each kind: every
    diffusers tensor, tagged with its own constant, comes back where it was."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
    )

    from trainer.models.bfl_format import transformer_to_bfl

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    tagged = {
        k: torch.full((), float(i), dtype=torch.bfloat16).expand(shape)
        for i, (k, shape) in enumerate(shapes.items())
    }
    bfl = transformer_to_bfl(tagged)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.bias" in bfl
    assert "final_layer.adaLN_modulation.1.weight" in bfl and "guidance_in.in_layer.weight" in bfl
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(back) == set(shapes)
    for i, (key, shape) in enumerate(shapes.items()):
        got = back[key]
        assert got.shape == shape, key
        assert float(got.amin()) == float(got.amax()) == float(i), key
    # diffusers' final modulation is (scale, shift); BFL's is (shift, scale).
    swapped = transformer_to_bfl({"norm_out.linear.bias": torch.arange(4.0)})
    assert swapped["final_layer.adaLN_modulation.1.bias"].tolist() == [2.0, 3.0, 0.0, 1.0]
    back = convert_flux_transformer_checkpoint_to_diffusers(
        {
            **bfl,
            "final_layer.adaLN_modulation.1.bias": swapped["final_layer.adaLN_modulation.1.bias"],
        }
    )
    assert back["norm_out.linear.bias"].tolist() == [0.0, 1.0, 2.0, 3.0]

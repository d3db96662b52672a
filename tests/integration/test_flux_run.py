"""``model=tiny_flux`` through the composed config tree: the run trains the transformer's double-
and single-block Linear layers (and CLIP-L when asked), saves a file with kohya's Flux prefixes
and metadata (LyCORIS LoKr: ``lycoris_`` names of the diffusers layers), and Flux refuses what
it does not support before loading."""

from __future__ import annotations

import pytest
import torch

from trainer.errors import ConfigError
from trainer.networks.kohya_format import read_lora
from trainer.run import train_from_config

SHORT = ("model=tiny_flux", "train.max_train_steps=3", "train.batch_size=2")


def test_tiny_flux_run_trains_and_saves_kohya_flux_names(compose):
    cfg = compose(*SHORT, "train.gradient_checkpointing=true")
    result = train_from_config(cfg)
    assert result.global_step == 3
    assert all(loss == loss and loss > 0 for loss in result.epoch_losses.values())  # finite
    state_dict, meta = read_lora(result.saved[-1].path)
    modules = {k.split(".")[0] for k in state_dict}
    unet = {m for m in modules if m.startswith("lora_unet_")}
    # 14 Linear layers in the double block, 6 in the single block, saved as BFL's 10 + 3
    # modules (q / k / v in one qkv; q / k / v / mlp in linear1).
    assert len(unet) == 13
    assert {
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_0_txt_attn_qkv",
        "lora_unet_single_blocks_0_linear1",
        "lora_unet_double_blocks_0_img_attn_proj",
        "lora_unet_double_blocks_0_img_mlp_0",
        "lora_unet_double_blocks_0_txt_mod_lin",
        "lora_unet_single_blocks_0_linear2",
        "lora_unet_single_blocks_0_modulation_lin",
    } <= unet
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    # kohya's sai_model_spec: BFL's code as the implementation, no prediction type for Flux.
    assert meta["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    assert "modelspec.prediction_type" not in meta
    assert meta["ss_network_module"] == "networks.lora_flux"
    # kohya's flux_train_network.update_metadata keys, with the recommended settings.
    assert meta["ss_timestep_sampling"] == "shift"
    assert float(meta["ss_discrete_flow_shift"]) == 3.1582
    assert float(meta["ss_guidance_scale"]) == 1.0
    assert meta["ss_model_prediction_type"] == "raw"


def test_frozen_text_encoders_train_the_transformer_only(compose):
    cfg = compose(*SHORT, "network.train_text_encoder=false", "model.timestep_sampling=flux_shift",
                  "model.loss_weighting=cosmap")  # fmt: skip
    result = train_from_config(cfg)
    state_dict, _ = read_lora(result.saved[-1].path)
    assert state_dict and all(k.startswith("lora_unet_") for k in state_dict)


def test_tiny_flux_lokr_run_saves_lycoris_names_of_the_diffusers_layers(compose):
    cfg = compose(*SHORT, "network=lokr", "network.dim=2", "network.factor=4")
    result = train_from_config(cfg)
    state_dict, meta = read_lora(result.saved[-1].path)
    modules = {k.split(".")[0] for k in state_dict}
    # 14 + 6 Linear layers, each its own module (a Kronecker product does not fuse).
    assert len({m for m in modules if m.startswith("lycoris_")}) == 20
    assert "lycoris_single_transformer_blocks_0_proj_mlp" in modules
    assert all(m.startswith(("lycoris_", "lora_te1_")) for m in modules)
    assert any(k.endswith(".lokr_w1") for k in state_dict)
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_base_model_version"] == "flux1"


def test_bf16_run_stores_every_frozen_part_but_the_vae_in_bf16(compose):
    """train.frozen_precision auto with bf16: the transformer's and CLIP-L's base weights and
    the frozen T5-XXL in bf16 (kohya loads T5 in the weight dtype too); the VAE as loaded (its
    weights key the latent cache); the adapters in fp32."""
    from trainer.models.flux import build_tiny_flux_components

    components = build_tiny_flux_components()
    cfg = compose(*SHORT, "train.mixed_precision=bf16", "train.frozen_precision=auto",
                  "train.device=cpu", "train.max_train_steps=1")  # fmt: skip
    train_from_config(cfg, components=components)

    def dtypes(module, trainable):
        return {p.dtype for p in module.parameters() if p.requires_grad is trainable}

    for part in ("transformer", "text_encoder", "text_encoder_2"):
        assert dtypes(getattr(components, part), False) == {torch.bfloat16}, part
    assert dtypes(components.vae, False) == {torch.float32}
    adapters = dtypes(components.transformer, True) | dtypes(components.text_encoder, True)
    assert adapters == {torch.float32}
    assert not dtypes(components.text_encoder_2, True)  # nothing trains T5


def test_ia3_on_flux_is_refused_naming_the_allowed_types(compose):
    with pytest.raises(ConfigError, match="'ia3' is not allowed for model.family flux"):
        train_from_config(compose(*SHORT, "network=ia3"))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.min_snr_gamma=5", "train.min_snr_gamma: 5 is not allowed for model.family flux"),
        ("train.noise_offset=0.05", "train.noise_offset: 0.05 is not allowed"),
        ("model.timestep_sampling=sigma", "model.timestep_sampling: 'sigma' is not allowed"),
        ("model.prediction_type=v_prediction", "model.prediction_type: 'v_prediction'"),
    ],
)
def test_flux_refuses_what_it_does_not_support_naming_the_key(compose, override, named):
    cfg = compose(*SHORT, override)
    with pytest.raises(ConfigError) as caught:
        train_from_config(cfg)
    assert named in str(caught.value)


def test_kohyas_flux_recipe_composes_with_its_numbers(compose):
    from trainer.validate import validate_run

    spec = validate_run(compose("+experiment=flux_kohya", "model=tiny_flux"))
    assert (spec.network.dim, spec.network.alpha, spec.network.train_text_encoder) == (
        16,
        1,
        False,
    )
    assert (spec.optimizer.name, spec.optimizer.unet_lr) == ("AdamW8bit", 1e-4)
    assert spec.scheduler.name == "constant"
    assert (spec.train.max_train_epochs, spec.train.gradient_checkpointing) == (10, True)
    flow = spec.model.flow
    assert (flow.timestep_sampling, flow.guidance_scale) == ("flux_shift", 1.0)


@pytest.mark.parametrize("category", list("ABCDEFGHI"))
def test_every_category_sweep_on_flux_passes_the_sweeps_checks(compose, category):
    """The guide's categories compose with model=tiny_flux and search Flux's rank ranges
    (search.category_families.flux: the guide's, scaled to Flux's documented ranks)."""
    from sweeper.checks import run_problems
    from sweeper.search_config import build_search_space, read_settings
    from trainer.validate import validate_run

    cfg = compose(f"+category={category}", "model=tiny_flux")
    spec = validate_run(cfg, extra_checks=[run_problems])
    assert spec.model.family == "flux"
    read_settings(cfg.search)
    space = build_search_space(cfg.search, cfg, [], lambda name: None)
    (dim,) = [p for p in space.params if p.key == "network.dim"]
    assert dim.where.startswith(f"search.category_families.flux.dim.{category} ")


def test_the_guides_easy_recipe_is_refused_on_flux_for_its_min_snr(compose):
    """+experiment=easy sets min_snr_gamma 5, a DDPM weighting Flux has no use for."""
    from trainer.validate import validate_run

    with pytest.raises(ConfigError) as raised:
        validate_run(compose("+experiment=easy", "model=tiny_flux"))
    assert "train.min_snr_gamma: 5 is not allowed for model.family flux; allowed: None" in (
        raised.value.problems
    )


def test_a_flux_sweep_with_a_ddpm_sampler_is_refused_before_training(compose):
    from sweeper.checks import key_problems

    problems = key_problems(compose("model=tiny_flux", "eval.sampler=ddim"))
    assert "eval.sampler: 'ddim' is not allowed for model.family flux; allowed: euler" in problems
    assert not [p for p in key_problems(compose("model=tiny_flux", "eval.sampler=euler"))
                if p.startswith("eval.sampler")]  # fmt: skip


def test_flux_evaluates_with_its_own_sampler_and_guidance_by_default(compose):
    from evaluators.settings import read_eval_settings

    flux = read_eval_settings(compose("model=tiny_flux").eval)
    assert (flux.sampler, flux.guidance_scale) == ("euler", 3.5)
    sd = read_eval_settings(compose("model=tiny").eval)
    assert (sd.sampler, sd.guidance_scale) == ("ddim", 7.0)

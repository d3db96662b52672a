"""The SD 1.x family object: one training step's loss, conditioning, LoRA names, pipeline.

The loss numbers were computed by the training loop before it went through the family
(``_batch_loss`` of commit 2116ccd, which called ``trainer.loop.noise`` and the UNet directly),
on the same inputs: the family must reproduce them.
"""

from __future__ import annotations

import pytest
import torch

from trainer.families import family_of, get_family
from trainer.families.base import Conditioning
from trainer.loop import noise as ddpm
from trainer.loop import train as loop
from trainer.models.text_encoding import encode_prompts
from trainer.models.tiny import build_tiny_components
from trainer.networks import kohya_format as kf
from trainer.networks.factory import build_network
from trainer.networks.lora import find_text_encoder_targets, find_unet_targets

CAPTIONS = ["a cat", "a photo of a dog"]
# (prediction type, min-SNR gamma, noise offset) -> the loop's loss before the family seam.
BEFORE = {
    ("epsilon", None, 0.0): 0.7704194784164429,
    ("epsilon", 5.0, 0.1): 0.8134351968765259,
    ("v_prediction", None, 0.0): 0.8379513025283813,
    ("v_prediction", 5.0, 0.1): 0.07818203419446945,
}
LORA = {
    "type": "lora",
    "dim": 4,
    "alpha": 2,
    "conv_dim": None,
    "conv_alpha": None,
    "dropout": 0.0,
    "train_unet": True,
    "train_text_encoder": True,
}


def _inputs():
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    batch = {"captions": CAPTIONS, "loss_weights": torch.tensor([1.0, 0.5])}
    return latents, batch


@pytest.mark.parametrize(("prediction", "gamma", "offset"), list(BEFORE))
def test_one_training_step_loss_equals_the_loop_before_the_seam(prediction, gamma, offset):
    c = build_tiny_components(0, prediction)
    family = family_of(c)
    latents, batch = _inputs()
    settings = loop.LoopSettings(
        epochs=1, max_steps=1, min_snr_gamma=gamma, noise_offset=offset, train_text_encoder=False
    )
    conditioner = loop.TextConditioner(family, c, settings)
    generator = torch.Generator().manual_seed(42)
    cpu = torch.device("cpu")
    with torch.no_grad():
        loss = loop._batch_loss(batch, latents, c.unet, family, c, conditioner, settings,
                                generator, cpu)  # fmt: skip
    assert float(loss) == pytest.approx(BEFORE[(prediction, gamma, offset)], rel=1e-5)

    # The same step spelled with the SD 1.x functions the family delegates to.
    generator = torch.Generator().manual_seed(42)
    with torch.no_grad():
        states = encode_prompts(c.tokenizer, c.text_encoder, CAPTIONS)
        noise = ddpm.sample_noise(latents, offset, generator)
        t = ddpm.sample_timesteps(2, c.noise_scheduler.config.num_train_timesteps, generator, cpu)
        pred = c.unet(c.noise_scheduler.add_noise(latents, noise, t), t, states).sample
        target = ddpm.training_target(c.noise_scheduler, latents, noise, t)
        weights = batch["loss_weights"] * ddpm.min_snr_weights(c.noise_scheduler, t, gamma)
        direct = (ddpm.per_sample_mse(pred, target) * weights).mean()
    assert torch.equal(loss, direct)


def test_the_family_pieces_equal_the_ddpm_functions():
    c = build_tiny_components(0, "v_prediction")
    family = get_family("sd15")
    latents, _ = _inputs()
    noise = family.sample_noise(latents, 0.0, torch.Generator().manual_seed(3))
    t = family.sample_timesteps(c, 2, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert t.dtype == torch.int64 and t.shape == (2,)
    assert int(t.min()) >= 0 and int(t.max()) < c.noise_scheduler.config.num_train_timesteps
    assert torch.equal(
        family.training_target(c, latents, noise, t),
        c.noise_scheduler.get_velocity(latents, noise, t),
    )
    assert torch.equal(
        family.loss_weights(c, t, 5.0), ddpm.min_snr_weights(c.noise_scheduler, t, 5.0)
    )
    assert torch.equal(family.loss_weights(c, t, None), torch.ones(2))


def test_frozen_text_encoder_cache_gives_the_encoder_outputs():
    c = build_tiny_components(0)
    family = family_of(c)
    frozen = loop.TextConditioner(
        family, c, loop.LoopSettings(epochs=1, max_steps=1, train_text_encoder=False)
    )
    batch = {"captions": ["a dog", "a cat", "a dog"]}
    first, again = frozen(batch), frozen(batch)  # the second comes from the cache
    with torch.no_grad():
        direct = family.encode_prompts(c, batch["captions"], max_token_length=75, clip_skip=1)
    assert isinstance(first, Conditioning) and first.extra == {}
    assert torch.equal(first.hidden_states, direct.hidden_states)
    assert torch.equal(again.hidden_states, direct.hidden_states)
    assert sorted(frozen._cache) == ["a cat", "a dog"]


def test_clip_skip_and_long_prompts_reach_the_text_encoder():
    c = build_tiny_components(0)
    family = family_of(c)
    with torch.no_grad():
        cond = family.encode_prompts(c, CAPTIONS, max_token_length=150, clip_skip=2)
        want = encode_prompts(c.tokenizer, c.text_encoder, CAPTIONS, 150, clip_skip=2)
    assert cond.hidden_states.shape[:2] == (2, 152)
    assert torch.equal(cond.hidden_states, want)


def test_lora_targets_and_kohya_names_come_from_the_family():
    c = build_tiny_components(0)
    family = family_of(c)
    assert family.lora_targets("unet", c.unet, with_conv=True) == find_unet_targets(c.unet, True)
    assert family.lora_targets("text_encoder", c.text_encoder, False) == (
        find_text_encoder_targets(c.text_encoder)
    )
    for component, path in (("unet", "mid_block.attentions.0.proj_in"),
                            ("text_encoder", "encoder.layers.0.self_attn.q_proj")):  # fmt: skip
        assert family.kohya_module_name(component, path) == kf.kohya_module_name(component, path)
    with pytest.raises(ValueError, match="'text_encoder_2'"):
        family.lora_targets("text_encoder_2", c.text_encoder, False)


class _RenamedFamily(type(get_family("sd15"))):
    """SD 1.x with other kohya prefixes and only the text encoder's query projections as
    targets: what the network builder adapts and writes must follow the family it is given."""

    kohya_prefixes = {"unet": "x_unet", "text_encoder": "x_te"}

    def kohya_module_name(self, component, module_path):
        return f"{self.kohya_prefixes[component]}_{module_path.replace('.', '_')}"

    def lora_targets(self, component, module, with_conv):
        targets = super().lora_targets(component, module, with_conv)
        if component == "text_encoder":
            return {p: kind for p, kind in targets.items() if p.endswith("q_proj")}
        return targets


def test_the_network_builder_routes_targets_and_names_through_the_family():
    default = build_network(*_unet_te(), LORA)
    renamed = build_network(*_unet_te(), LORA, _RenamedFamily())
    default_names = {k.split(".")[0] for k in default.kohya_state_dict()}
    unet = {n for n in default_names if n.startswith("lora_unet_")}
    te = {n for n in default_names if n.startswith("lora_te_text_model_")}
    assert unet and te and unet | te == default_names
    want = {"x_unet_" + n[len("lora_unet_") :] for n in unet} | {
        "x_te_" + n[len("lora_te_text_model_") :] for n in te if n.endswith("q_proj")
    }
    assert {k.split(".")[0] for k in renamed.kohya_state_dict()} == want
    assert 0 < len(renamed.text_encoder_parameters()) < len(default.text_encoder_parameters())


def _unet_te():
    c = build_tiny_components(0)
    return c.unet, c.text_encoder


def test_pipeline_and_generation_inputs():
    c = build_tiny_components(0)
    family = family_of(c)
    pipe = family.pipeline(c)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet is c.unet and pipe.scheduler is c.noise_scheduler
    pos, neg = Conditioning(torch.ones(1, 77, 8)), Conditioning(torch.zeros(1, 77, 8))
    inputs = family.generation_inputs(pos, neg)
    assert set(inputs) == {"prompt_embeds", "negative_prompt_embeds"}
    assert inputs["prompt_embeds"] is pos.hidden_states
    assert inputs["negative_prompt_embeds"] is neg.hidden_states


def test_conditioning_split_and_stack_are_inverse():
    cond = Conditioning(torch.randn(3, 5, 4), {"text_embeds": torch.randn(3, 6)})
    parts = cond.split()
    assert len(parts) == 3 and parts[1].extra["text_embeds"].shape == (6,)
    back = Conditioning.stack(parts)
    assert torch.equal(back.hidden_states, cond.hidden_states)
    assert torch.equal(back.extra["text_embeds"], cond.extra["text_embeds"])
    assert back.to(torch.float16).extra["text_embeds"].dtype == torch.float16

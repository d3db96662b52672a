"""Stable Diffusion 1.x (SD 1.4/1.5 and their fine-tunes): the first :class:`ModelFamily`.

Every method delegates to the modules that implement SD 1.x: ``trainer.models.loading``
(checkpoints, folders, built-in models), ``trainer.models.text_encoding`` (CLIP with
``clip_skip`` and 75/150/225-token chunks), ``trainer.loop.noise`` (DDPM noise, epsilon /
v-prediction targets, min-SNR), ``trainer.networks.lora`` / ``kohya_format`` (kohya's targets
and ``lora_unet_`` / ``lora_te_`` names) and ``SDComponents.to_pipeline``
(``StableDiffusionPipeline``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from trainer.families.base import BucketGeometry, Conditioning, ModelFamily
from trainer.loop import noise as ddpm
from trainer.models import loading
from trainer.models.components import SDComponents
from trainer.models.text_encoding import encode_prompts
from trainer.networks import kohya_format as kf
from trainer.networks import lora


class SD15Family(ModelFamily):
    name = "sd15"
    base_model_version = "sd_v1"
    kohya_prefixes = {"unet": kf.UNET_PREFIX, "text_encoder": kf.TEXT_ENCODER_PREFIX}
    native_geometry = BucketGeometry(
        resolution=512, min_bucket_reso=320, max_bucket_reso=1024, bucket_reso_steps=64
    )

    def load(
        self,
        settings: loading.ModelSettings,
        cache_dir: Path,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> SDComponents:
        components = loading.load_sd_components(settings, Path(cache_dir))
        components.family = self.name
        if device is not None or dtype is not None:
            for module in (components.unet, components.vae, components.text_encoder):
                module.to(device=device, dtype=dtype)
        return components

    def denoiser(self, components: SDComponents) -> nn.Module:
        return components.unet

    def text_encoders(self, components: SDComponents) -> dict[str, nn.Module]:
        return {"text_encoder": components.text_encoder}

    def encode_prompts(
        self,
        components: SDComponents,
        prompts: Sequence[str],
        *,
        max_token_length: int,
        clip_skip: int,
    ) -> Conditioning:
        states = encode_prompts(
            components.tokenizer, components.text_encoder, list(prompts), max_token_length,
            clip_skip,
        )  # fmt: skip
        return Conditioning(states)

    def sample_noise(
        self, latents: torch.Tensor, noise_offset: float, generator: torch.Generator
    ) -> torch.Tensor:
        return ddpm.sample_noise(latents, noise_offset, generator)

    def sample_timesteps(
        self,
        components: SDComponents,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        latent_shape=None,
    ) -> torch.Tensor:
        total = components.noise_scheduler.config.num_train_timesteps
        return ddpm.sample_timesteps(batch_size, total, generator, device)

    def add_noise(self, components, latents, noise, timesteps) -> torch.Tensor:
        return components.noise_scheduler.add_noise(latents, noise, timesteps)

    def predict(self, denoiser, noisy, timesteps, conditioning: Conditioning) -> torch.Tensor:
        return denoiser(noisy, timesteps, conditioning.hidden_states).sample

    def training_target(self, components, latents, noise, timesteps) -> torch.Tensor:
        return ddpm.training_target(components.noise_scheduler, latents, noise, timesteps)

    def loss_weights(self, components, timesteps, min_snr_gamma) -> torch.Tensor:
        return ddpm.min_snr_weights(components.noise_scheduler, timesteps, min_snr_gamma)

    def lora_targets(self, component: str, module: nn.Module, with_conv: bool) -> dict[str, str]:
        if component == "unet":
            return lora.find_unet_targets(module, with_conv)
        if component == "text_encoder":
            return lora.find_text_encoder_targets(module)
        raise self.unknown_component(component)

    def kohya_module_name(self, component: str, module_path: str) -> str:
        # The text encoder's paths keep transformers 4's ``text_model.`` root (kohya_format).
        self.kohya_prefix(component)  # a component SD 1.x lacks: named with the allowed ones
        return kf.kohya_module_name(component, module_path)

    def lycoris_preset(self, preset: str) -> dict:
        # Imported here: lycoris-lora is only needed by the LyCORIS network types.
        from trainer.networks.lycoris_net import PRESETS

        return PRESETS[preset]

    def pipeline(self, components: SDComponents, scheduler=None):
        return components.to_pipeline(scheduler)

    def save_checkpoint(self, components, path, dtype=None, metadata=None) -> Path:
        from trainer.models.ldm_format import save_single_file

        return save_single_file(components, path, dtype=dtype, metadata=metadata)

    def generation_inputs(
        self, positive: Conditioning, negative: Conditioning
    ) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeds": positive.hidden_states,
            "negative_prompt_embeds": negative.hidden_states,
        }

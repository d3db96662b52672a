"""The parts of an SD 1.x pipeline that training and evaluation use, in one container."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer


def seeded_modules(
    seed: int, *builders: Callable[[], torch.nn.Module], device: torch.device | None = None
) -> list[torch.nn.Module]:
    """The modules ``builders`` make, each built right after ``torch.manual_seed(seed + i)``
    (``i`` its position): the same seed always gives the same weights, whatever was built
    before. Inside ``device`` when given (``meta``: shapes only). The caller's random state
    is restored afterwards."""
    state = torch.random.get_rng_state()
    try:
        with device if device is not None else contextlib.nullcontext():
            modules = []
            for offset, build in enumerate(builders):
                torch.manual_seed(seed + offset)
                modules.append(build())
            return modules
    finally:
        torch.random.set_rng_state(state)


class VaeGeometry:
    """What every family's components read from their VAE: its downsampling factor
    (2^(blocks - 1)) and the scaling factor of its latents."""

    vae: AutoencoderKL

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


@dataclass
class SDComponents(VaeGeometry):
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    source: str
    """Where the weights came from: ``tiny``, a file path, a folder or a hub id."""
    base_model_version: str = "sd_v1"
    extra: dict = field(default_factory=dict)
    family: str = "sd15"
    """The ``model.family`` that loaded these components (``trainer.families``)."""

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet, self.vae, self.text_encoder)

    def to_pipeline(self, scheduler=None):
        """A ``StableDiffusionPipeline`` over these modules (shared, not copied)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler or self.noise_scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

"""The ``sd15_shape`` model: the SD 1.5 architecture with random weights, for benchmarks only.

UNet (860M parameters), VAE (84M) and CLIP ViT-L/14 text encoder (123M) are built from the
bundled SD 1.5 configs (``trainer/models/configs/sd15``), so no file and no network is needed.
Throughput and memory do not depend on the weights, so this measures what a real SD 1.5 run
costs; its images mean nothing. Building ~1B parameters takes ~20 s on a CPU: ``device``
builds the modules directly on a GPU (initialised there, much faster), and a ``meta`` device
gives shapes only (for tests and FLOP counting).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from trainer.models import loading
from trainer.models.components import SDComponents, seeded_modules
from trainer.models.tokenizer import build_clip_tokenizer

NAME = "sd15_shape"
NATIVE_RESOLUTION = 512


def sd15_configs() -> tuple[dict, dict, CLIPTextConfig, dict]:
    """(UNet config, VAE config, text-encoder config, scheduler config) of SD 1.5."""
    folder = str(loading.BUNDLED_CONFIGS / "sd15")
    unet = dict(UNet2DConditionModel.load_config(folder, subfolder="unet"))
    vae = dict(AutoencoderKL.load_config(folder, subfolder="vae"))
    text = CLIPTextConfig.from_pretrained(str(loading.BUNDLED_CONFIGS / "sd15" / "text_encoder"))
    scheduler = dict(loading.DDPMScheduler.load_config(folder, subfolder="scheduler"))
    return unet, vae, text, scheduler


def build_sd15_shape_components(
    seed: int = 0,
    prediction_type: str = "epsilon",
    device: str | torch.device = "cpu",
) -> SDComponents:
    """SD 1.5-shaped modules with random weights (same ``seed`` and device: same weights)."""
    unet_config, vae_config, text_config, scheduler_config = sd15_configs()
    unet, vae, text_encoder = seeded_modules(
        seed,
        lambda: UNet2DConditionModel.from_config(unet_config),
        lambda: AutoencoderKL.from_config(vae_config),
        lambda: CLIPTextModel(text_config),
        device=torch.device(device),
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        noise_scheduler=loading.training_scheduler(scheduler_config, prediction_type),
        source=NAME,
    )

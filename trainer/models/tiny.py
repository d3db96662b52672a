"""The ``tiny`` model: an SD 1.x-shaped pipeline with deterministic random weights.

Same block types and wiring as SD 1.5 (cross-attention down/up blocks with resnets and 3x3
convs, a 4-level KL VAE with an 8x downsampling factor, a CLIP text encoder with the real CLIP
tokenizer), only narrow and shallow, so that it trains on a CPU in seconds. Everything is built
from the configs below: no file and no network is needed.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from trainer.models.components import SDComponents, seeded_modules
from trainer.models.tokenizer import VOCAB_SIZE, build_clip_tokenizer

TEXT_HIDDEN = 32

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TEXT_CONFIG = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": TEXT_HIDDEN,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

# SD 1.x's training noise schedule.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

NATIVE_RESOLUTION = 64


def build_tiny_components(seed: int = 0, prediction_type: str = "epsilon") -> SDComponents:
    """Build the tiny pipeline; the same ``seed`` always gives the same weights."""
    unet, vae, text_encoder = seeded_modules(
        seed,
        lambda: UNet2DConditionModel(**UNET_CONFIG),
        lambda: AutoencoderKL(**VAE_CONFIG),
        lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)),
    )
    scheduler = DDPMScheduler.from_config({**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    for module in (unet, vae, text_encoder):
        module.eval()
    return SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        noise_scheduler=scheduler,
        source="tiny",
    )

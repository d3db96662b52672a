"""SDXL's components: the container, and the built-in models ``tiny_sdxl`` and ``sdxl_shape``.

SDXL differs from SD 1.x in what the UNet is conditioned on: two text encoders (OpenAI CLIP
ViT-L, ``CLIPTextModel``, and OpenCLIP ViT-bigG, ``CLIPTextModelWithProjection``) whose
penultimate hidden states are concatenated (768 + 1280 = 2048 channels of cross-attention),
plus ``added_cond_kwargs``: the pooled, projected embedding of the second encoder
(``text_embeds``) and six size / crop numbers per sample (``time_ids``), embedded by the UNet's
``add_embedding`` (``addition_embed_type="text_time"``).

* ``tiny_sdxl``: the same wiring (three UNet levels, the first without attention, two
  transformer blocks in the last level, linear projections, text-time embedding, both text
  encoders, a 4-level 8x VAE) only narrow and shallow, with deterministic random weights: it
  trains on a CPU in seconds.
* ``sdxl_shape``: SDXL 1.0 base's real architecture from the bundled configs
  (``trainer/models/configs/sdxl``) with random weights, for benchmarks only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.models import tiny
from trainer.models.components import VaeGeometry, seeded_modules
from trainer.models.tokenizer import VOCAB_SIZE, build_clip_tokenizer

FAMILY = "sdxl"
# kohya's ss_base_model_version (library/sdxl_model_util.py: MODEL_VERSION_SDXL_BASE_V1_0).
BASE_MODEL_VERSION = "sdxl_base_v1-0"

TINY = "tiny_sdxl"
SHAPE = "sdxl_shape"
BUILT_IN = (TINY, SHAPE)

# The tiny text encoders' widths; the UNet attends to both: 80 channels. They differ, as
# SDXL's 768 and 1280 do: diffusers' single-file loader tells the two encoders apart by width.
TEXT_HIDDEN = 32
TEXT_2_HIDDEN = 48
TIME_EMBED = 8  # width of each of the six size / crop numbers' sinusoidal embedding

TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [2, 4, 4],
    "cross_attention_dim": TEXT_HIDDEN + TEXT_2_HIDDEN,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED,
    # pooled text embedding + 6 embedded size / crop numbers, as SDXL's 1280 + 6 * 256 = 2816
    "projection_class_embeddings_input_dim": TEXT_2_HIDDEN + 6 * TIME_EMBED,
}

# The tiny SD VAE with SDXL's VAE scaling factor.
TINY_VAE_CONFIG = {**tiny.VAE_CONFIG, "scaling_factor": 0.13025}

_TINY_TEXT_COMMON = {
    "vocab_size": VOCAB_SIZE,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
TINY_TEXT_CONFIG = {
    **_TINY_TEXT_COMMON,
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 2 * TEXT_HIDDEN,
    "projection_dim": TEXT_HIDDEN,
    "hidden_act": "quick_gelu",
    "pad_token_id": 49407,
}
TINY_TEXT_2_CONFIG = {
    **_TINY_TEXT_COMMON,
    "hidden_size": TEXT_2_HIDDEN,
    "intermediate_size": 2 * TEXT_2_HIDDEN,
    "projection_dim": TEXT_2_HIDDEN,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}

# SDXL's training noise schedule (the same DDPM betas as SD 1.x).
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

NATIVE_RESOLUTION = 1024
TINY_RESOLUTION = 64


@dataclass
class SDXLComponents(VaeGeometry):
    """The parts of an SDXL pipeline that training and evaluation use."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    source: str
    """Where the weights came from: ``tiny_sdxl``, a file path, a folder or a hub id."""
    base_model_version: str = BASE_MODEL_VERSION
    extra: dict = field(default_factory=dict)
    family: str = FAMILY

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet, self.vae, self.text_encoder, self.text_encoder_2)

    def to_pipeline(self, scheduler=None):
        """A ``StableDiffusionXLPipeline`` over these modules (shared, not copied)."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=scheduler or self.noise_scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )


def build_sdxl_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """SDXL's two tokenizers: the same CLIP BPE vocabulary; the second pads with ``!`` (id 0),
    as OpenCLIP does (``stabilityai/stable-diffusion-xl-base-1.0``'s ``tokenizer_2``)."""
    second = build_clip_tokenizer()
    second.pad_token = "!"
    return build_clip_tokenizer(), second


def _components(unet, vae, te1, te2, scheduler_config, prediction_type, source) -> SDXLComponents:
    from trainer.models.loading import training_scheduler

    for module in (unet, vae, te1, te2):
        module.eval()
    tokenizer, tokenizer_2 = build_sdxl_tokenizers()
    return SDXLComponents(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        noise_scheduler=training_scheduler(scheduler_config, prediction_type),
        source=source,
    )


def build_tiny_sdxl_components(seed: int = 0, prediction_type: str = "epsilon") -> SDXLComponents:
    """The tiny SDXL-shaped pipeline; the same ``seed`` always gives the same weights."""
    unet, vae, te1, te2 = seeded_modules(
        seed,
        lambda: UNet2DConditionModel(**TINY_UNET_CONFIG),
        lambda: AutoencoderKL(**TINY_VAE_CONFIG),
        lambda: CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)),
        lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_2_CONFIG)),
    )
    return _components(unet, vae, te1, te2, SCHEDULER_CONFIG, prediction_type, TINY)


def sdxl_configs() -> tuple[dict, dict, CLIPTextConfig, CLIPTextConfig, dict]:
    """(UNet, VAE, text encoder, text encoder 2, scheduler) configs of SDXL 1.0 base."""
    from trainer.models.loading import BUNDLED_CONFIGS

    folder = BUNDLED_CONFIGS / "sdxl"
    unet = dict(UNet2DConditionModel.load_config(str(folder), subfolder="unet"))
    vae = dict(AutoencoderKL.load_config(str(folder), subfolder="vae"))
    te1 = CLIPTextConfig.from_pretrained(str(folder / "text_encoder"))
    te2 = CLIPTextConfig.from_pretrained(str(folder / "text_encoder_2"))
    scheduler = dict(DDPMScheduler.load_config(str(folder), subfolder="scheduler"))
    return unet, vae, te1, te2, scheduler


def build_sdxl_shape_components(
    seed: int = 0, prediction_type: str = "epsilon", device: str | torch.device = "cpu"
) -> SDXLComponents:
    """SDXL 1.0 base-shaped modules (2.6B UNet, 0.8B text encoders) with random weights; a
    ``meta`` device gives shapes only."""
    unet_config, vae_config, te1_config, te2_config, scheduler_config = sdxl_configs()
    unet, vae, te1, te2 = seeded_modules(
        seed,
        lambda: UNet2DConditionModel.from_config(unet_config),
        lambda: AutoencoderKL.from_config(vae_config),
        lambda: CLIPTextModel(te1_config),
        lambda: CLIPTextModelWithProjection(te2_config),
        device=torch.device(device),
    )
    return _components(unet, vae, te1, te2, scheduler_config, prediction_type, SHAPE)

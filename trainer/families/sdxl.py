"""Stable Diffusion XL (SDXL 1.0 base and its fine-tunes: Pony, Illustrious, NoobAI, ...).

What differs from SD 1.x (``trainer.families.sd15``), and where it comes from:

* Loading: ``trainer.models.sdxl_loading`` (single-file SGM checkpoints, diffusers folders, hub
  ids, the built-in ``tiny_sdxl`` and ``sdxl_shape``).
* Conditioning: both text encoders' penultimate hidden states (no final layer norm),
  concatenated along the channels, and the second encoder's pooled, projected embedding
  (``text_embeds``), as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` and kohya's
  ``train_util.get_hidden_states_sdxl`` compute them. Per sample, ``time_ids`` = (original
  height, width, crop top, crop left, target height, width) from the sample's image and
  bucket, as kohya's data set computes them (:func:`kohya_crop_top_left`).
* Objective: the same DDPM noise, targets and min-SNR weights as SD 1.x
  (``trainer.loop.noise``), so noise offset, v-prediction and min-SNR work unchanged.
* LoRA: the same layers as kohya's ``networks/lora.py`` adapts (its target classes exist under
  the same names in kohya's SDXL UNet), named as kohya names them: UNet modules under their
  original (SGM) paths with ``lora_unet_`` (``lora_unet_input_blocks_4_1_transformer_blocks_0_
  attn1_to_q``), the text encoders as ``lora_te1_`` / ``lora_te2_`` with transformers' paths
  (``lora_te2_text_model_encoder_layers_0_mlp_fc1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.families.base import BucketGeometry, Conditioning, ModelFamily
from trainer.loop import noise as ddpm
from trainer.models import sdxl as xl
from trainer.models.text_encoding import CHUNK, tokenize_prompts
from trainer.networks import kohya_format as kf
from trainer.networks import lora

# The UNet layout the kohya names are computed for (SDXL 1.0 base; tiny_sdxl has the same).
_LAYOUT_KEYS = ("layers_per_block", "down_block_types", "up_block_types")


@cache
def _base_unet_config() -> Any:
    from diffusers import UNet2DConditionModel

    from trainer.models.loading import BUNDLED_CONFIGS

    return _Config(
        UNet2DConditionModel.load_config(str(BUNDLED_CONFIGS / "sdxl"), subfolder="unet")
    )


class _Config:
    """Attribute access to a config dict (what ``ldm_format``'s layout functions read)."""

    def __init__(self, config: Mapping[str, Any]):
        self.__dict__.update(config)


def kohya_crop_top_left(
    original: tuple[int, int], bucket: tuple[int, int], flipped: bool
) -> tuple[int, int]:
    """(crop top, crop left) of an image of ``original`` (width, height) trained in ``bucket``
    (width, height), as kohya's ``BucketManager.get_crop_ltrb`` computes it for SDXL's size
    conditioning: the offsets at which the image, scaled to *fit inside* the bucket, would sit
    centred (kohya's reading of Stability's preprocessing), whatever part of the image the
    bucket's actual crop keeps; mirrored (``bucket width - crop right``) for a flipped image."""
    bucket_w, bucket_h = bucket
    image_ar = original[0] / original[1]
    if bucket_w / bucket_h > image_ar:
        resized_w, resized_h = bucket_h * image_ar, bucket_h
    else:
        resized_w, resized_h = bucket_w, bucket_w / image_ar
    left = (bucket_w - resized_w) // 2
    top = (bucket_h - resized_h) // 2
    if flipped:
        left = bucket_w - (left + resized_w)
    return int(top), int(left)


def time_ids(
    originals: Sequence[tuple[int, int]],
    buckets: Sequence[tuple[int, int]],
    flips: Sequence[bool],
) -> torch.Tensor:
    """``[B, 6]``: original (h, w), crop (top, left), target (h, w) per sample (sizes in
    (width, height) as the data set gives them)."""
    rows = []
    for (ow, oh), (bw, bh), flip in zip(originals, buckets, flips, strict=True):
        top, left = kohya_crop_top_left((ow, oh), (bw, bh), bool(flip))
        rows.append([oh, ow, top, left, bh, bw])
    return torch.tensor(rows, dtype=torch.float32)


def _tokenize(tokenizer, prompts: list[str], max_token_length: int) -> torch.Tensor:
    """``[B, n, 77]`` ids, as kohya's ``strategy_base._get_input_ids`` makes them.

    One chunk is the tokenizer's own padded encoding. Longer prompts: a tokenizer that pads
    with EOS (CLIP ViT-L's) is chunked as for SD 1.x (``text_encoding.tokenize_prompts``);
    one that pads with another token (OpenCLIP's ``!``) gets ``BOS + 75 ids + the sequence's
    last id`` per chunk, whose last id becomes EOS after a word, and whose first id becomes
    EOS when the chunk is only padding."""
    if max_token_length != CHUNK and tokenizer.pad_token_id == tokenizer.eos_token_id:
        return tokenize_prompts(tokenizer, prompts, max_token_length)
    ids = tokenizer(
        prompts, padding="max_length", max_length=max_token_length + 2, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    if max_token_length == CHUNK:
        return ids[:, None]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, max_token_length + 1, CHUNK):
        chunk = torch.cat([ids[:, :1], ids[:, start : start + CHUNK], ids[:, -1:]], dim=1)
        after_word = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
        chunk[after_word, -1] = eos
        chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def _encode(text_encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(penultimate states ``[B, 75 n + 2, D]``, pooled projection of the first chunk or None)."""
    batch, n_chunks, length = ids.shape
    device = next(text_encoder.parameters()).device
    out = text_encoder(ids.reshape(batch * n_chunks, length).to(device), output_hidden_states=True)
    states = out.hidden_states[-2].reshape(batch, n_chunks, length, -1)
    content = states[:, :, 1:-1].reshape(batch, n_chunks * CHUNK, -1)
    joined = torch.cat([states[:, 0, :1], content, states[:, -1, -1:]], dim=1)
    pooled = getattr(out, "text_embeds", None)
    if pooled is not None:
        pooled = pooled.reshape(batch, n_chunks, -1)[:, 0]
    return joined, pooled


class SDXLFamily(ModelFamily):
    name = "sdxl"
    base_model_version = xl.BASE_MODEL_VERSION
    modelspec_architecture = "stable-diffusion-xl-v1-base"
    kohya_prefixes = {
        "unet": kf.UNET_PREFIX,
        "text_encoder": "lora_te1",
        "text_encoder_2": "lora_te2",
    }
    # The keys of SDXL embeddings as WebUI and ComfyUI read them.
    embedding_keys = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
    native_geometry = BucketGeometry(
        resolution=1024, min_bucket_reso=512, max_bucket_reso=2048, bucket_reso_steps=64
    )

    def load(self, settings, cache_dir: Path, device=None, dtype=None) -> xl.SDXLComponents:
        from trainer.models.sdxl_loading import load_sdxl_components

        components = load_sdxl_components(settings, Path(cache_dir))
        if device is not None or dtype is not None:
            for module in components.modules:
                module.to(device=device, dtype=dtype)
        return components

    def denoiser(self, components) -> nn.Module:
        return components.unet

    def text_encoders(self, components) -> dict[str, nn.Module]:
        return {
            "text_encoder": components.text_encoder,
            "text_encoder_2": components.text_encoder_2,
        }

    def tokenizers(self, components) -> dict[str, Any]:
        return {"text_encoder": components.tokenizer, "text_encoder_2": components.tokenizer_2}

    def encode_prompts(
        self, components, prompts: Sequence[str], *, max_token_length: int, clip_skip: int
    ) -> Conditioning:
        if clip_skip != 1:
            raise ConfigError(
                f"model.clip_skip: {clip_skip!r} is not allowed for model.family sdxl; allowed: 1"
            )
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states_1, _ = _encode(
            components.text_encoder, _tokenize(components.tokenizer, prompts, max_token_length)
        )
        states_2, pooled = _encode(
            components.text_encoder_2,
            _tokenize(components.tokenizer_2, prompts, max_token_length),
        )
        hidden = torch.cat([states_1, states_2.to(states_1.dtype)], dim=-1)
        return Conditioning(hidden, {"text_embeds": pooled})

    def condition_batch(
        self, components, conditioning: Conditioning, batch: Mapping[str, Any]
    ) -> Conditioning:
        missing = [k for k in ("original_sizes", "target_sizes", "flips") if k not in batch]
        if missing:
            raise KeyError(f"SDXL's size conditioning needs the batch keys {missing}")
        ids = time_ids(batch["original_sizes"], batch["target_sizes"], batch["flips"])
        ids = ids.to(conditioning.hidden_states.device, conditioning.hidden_states.dtype)
        return Conditioning(conditioning.hidden_states, {**conditioning.extra, "time_ids": ids})

    # --- objective: SD's DDPM, shared with sd15 --------------------------------------------

    def sample_noise(self, latents, noise_offset, generator) -> torch.Tensor:
        return ddpm.sample_noise(latents, noise_offset, generator)

    def sample_timesteps(
        self, components, batch_size, generator, device, latent_shape=None
    ) -> torch.Tensor:
        total = components.noise_scheduler.config.num_train_timesteps
        return ddpm.sample_timesteps(batch_size, total, generator, device)

    def add_noise(self, components, latents, noise, timesteps) -> torch.Tensor:
        return components.noise_scheduler.add_noise(latents, noise, timesteps)

    def predict(self, denoiser, noisy, timesteps, conditioning: Conditioning) -> torch.Tensor:
        extra = conditioning.extra
        if "time_ids" not in extra:
            # Square, uncropped images at the latent's own size (what generation uses).
            h, w = noisy.shape[-2] * 8, noisy.shape[-1] * 8
            row = torch.tensor([h, w, 0, 0, h, w], dtype=noisy.dtype, device=noisy.device)
            extra = {**extra, "time_ids": row.expand(noisy.shape[0], 6)}
        added = {"text_embeds": extra["text_embeds"], "time_ids": extra["time_ids"]}
        states = conditioning.hidden_states
        return denoiser(noisy, timesteps, states, added_cond_kwargs=added).sample

    def training_target(self, components, latents, noise, timesteps) -> torch.Tensor:
        return ddpm.training_target(components.noise_scheduler, latents, noise, timesteps)

    def loss_weights(self, components, timesteps, min_snr_gamma) -> torch.Tensor:
        return ddpm.min_snr_weights(components.noise_scheduler, timesteps, min_snr_gamma)

    # --- LoRA ------------------------------------------------------------------------------

    def lora_targets(self, component: str, module: nn.Module, with_conv: bool) -> dict[str, str]:
        if component == "unet":
            _check_layout(module)
            return lora.find_unet_targets(module, with_conv)
        if component in ("text_encoder", "text_encoder_2"):
            return lora.find_text_encoder_targets(module)
        raise self.unknown_component(component)

    def kohya_module_name(self, component: str, module_path: str) -> str:
        from trainer.models.ldm_format import unet_module_to_ldm

        prefix = self.kohya_prefix(component)
        if component == "unet":
            module_path = unet_module_to_ldm(_base_unet_config(), module_path)
        elif not module_path.startswith("text_model."):
            module_path = "text_model." + module_path  # CLIPTextModel, flat in transformers 5
        return f"{prefix}_{module_path.replace('.', '_')}"

    def lycoris_preset(self, preset: str) -> dict:
        # SDXL's diffusers UNet and CLIP encoders have SD 1.x's block classes.
        from trainer.networks.lycoris_net import PRESETS

        return PRESETS[preset]

    # --- generation ------------------------------------------------------------------------

    def pipeline(self, components, scheduler=None):
        return components.to_pipeline(scheduler)

    def save_checkpoint(self, components, path, dtype=None, metadata=None) -> Path:
        from trainer.models.sgm_format import save_sgm_file

        return save_sgm_file(components, path, dtype=dtype, metadata=metadata)

    def generation_inputs(
        self, positive: Conditioning, negative: Conditioning
    ) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeds": positive.hidden_states,
            "negative_prompt_embeds": negative.hidden_states,
            "pooled_prompt_embeds": positive.extra["text_embeds"],
            "negative_pooled_prompt_embeds": negative.extra["text_embeds"],
        }


def _check_layout(unet: nn.Module) -> None:
    """kohya's names are computed for SDXL's block layout; another layout would be misnamed."""
    base = _base_unet_config()
    config = getattr(unet, "config", None)
    wrong = [
        f"{key}={getattr(config, key, None)!r} (SDXL: {getattr(base, key)!r})"
        for key in _LAYOUT_KEYS
        if list(_as_list(getattr(config, key, None))) != list(_as_list(getattr(base, key)))
    ]
    if wrong:
        raise ConfigError(
            "model.family sdxl: the UNet does not have SDXL's block layout, so kohya's SDXL "
            f"LoRA names would not fit it: {'; '.join(wrong)}"
        )


def _as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]

"""Sample images from a base model (with whatever LoRA is active) for a list of prompts.

Prompts are encoded with ``trainer.models.text_encoding.encode_prompts``, the function training
uses (same ``max_token_length`` chunking and ``clip_skip``), and handed to diffusers'
``StableDiffusionPipeline`` as ``prompt_embeds`` / ``negative_prompt_embeds``. Each image has
its own CPU generator seeded from its item, so an image does not depend on which batch it was
in, nor on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from evaluators.prompts import GenerationItem
from trainer.models.text_encoding import encode_prompts


@dataclass(frozen=True)
class SamplingOptions:
    steps: int
    guidance_scale: float
    width: int
    height: int
    negative_prompt: str
    batch_size: int
    max_token_length: int = 75
    clip_skip: int = 1


def make_encoder(components, max_token_length: int, clip_skip: int):
    """``encode(prompts) -> [B, L, hidden]`` with the training's settings, no gradients."""

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        return encode_prompts(
            components.tokenizer,
            components.text_encoder,
            list(prompts),
            max_token_length,
            clip_skip,
        )

    return encode


@torch.no_grad()
def generate(
    pipeline, components, items: Sequence[GenerationItem], options: SamplingOptions
) -> list[Image.Image]:
    """One image per item, in order. ``pipeline.scheduler`` is the sampler used."""
    encode = make_encoder(components, options.max_token_length, options.clip_skip)
    dtype = components.unet.dtype
    images: list[Image.Image] = []
    for start in range(0, len(items), options.batch_size):
        batch = items[start : start + options.batch_size]
        prompt_embeds = encode([item.prompt for item in batch]).to(dtype)
        negative = encode([options.negative_prompt] * len(batch)).to(dtype)
        generators = [torch.Generator().manual_seed(item.seed) for item in batch]
        out = pipeline(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance_scale,
            width=options.width,
            height=options.height,
            generator=generators,
            output_type="pil",
        )
        images.extend(out.images)
    return images

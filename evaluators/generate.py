"""Sample images from a base model (with whatever LoRA is active) for a list of prompts.

Prompts are encoded by the model family's ``encode_prompts``, the function training uses (same
``max_token_length`` chunking and ``clip_skip``), and handed to the family's diffusers pipeline
as pre-encoded prompts (SD 1.x: ``prompt_embeds`` / ``negative_prompt_embeds``). Each image has
its own CPU generator seeded from its item, so an image does not depend on which batch it was
in, nor on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from evaluators.prompts import GenerationItem
from trainer.families import family_of
from trainer.families.base import Conditioning


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


def make_conditioner(components, max_token_length: int, clip_skip: int):
    """``condition(prompts) -> Conditioning`` with the training's settings, no gradients."""
    family = family_of(components)

    @torch.no_grad()
    def condition(prompts: list[str]) -> Conditioning:
        return family.encode_prompts(
            components, list(prompts), max_token_length=max_token_length, clip_skip=clip_skip
        )

    return condition


def make_encoder(components, max_token_length: int, clip_skip: int):
    """``encode(prompts) -> [B, L, hidden]`` (the conditioning's hidden states), no gradients."""
    condition = make_conditioner(components, max_token_length, clip_skip)
    return lambda prompts: condition(prompts).hidden_states


@torch.no_grad()
def generate(
    pipeline, components, items: Sequence[GenerationItem], options: SamplingOptions
) -> list[Image.Image]:
    """One image per item, in order. ``pipeline.scheduler`` is the sampler used."""
    family = family_of(components)
    condition = make_conditioner(components, options.max_token_length, options.clip_skip)
    dtype = family.denoiser(components).dtype
    images: list[Image.Image] = []
    for start in range(0, len(items), options.batch_size):
        batch = items[start : start + options.batch_size]
        positive = condition([item.prompt for item in batch]).to(dtype)
        negative = condition([options.negative_prompt] * len(batch)).to(dtype)
        generators = [torch.Generator().manual_seed(item.seed) for item in batch]
        out = pipeline(
            **family.generation_inputs(positive, negative),
            num_inference_steps=options.steps,
            guidance_scale=options.guidance_scale,
            width=options.width,
            height=options.height,
            generator=generators,
            output_type="pil",
        )
        images.extend(out.images)
    return images

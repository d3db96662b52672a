"""What the Flux file tests compare: the tiny Flux's outputs on fixed inputs, before and after
a LoRA / LyCORIS file is applied, saved and read back."""

from __future__ import annotations

import torch

from trainer.families import family_of

PROMPT = ["a photo of a cat"]


def flux_outputs(c) -> list[torch.Tensor]:
    """CLIP's pooled output, T5's states and the transformer's prediction on fixed inputs."""
    family = family_of(c)
    g = torch.Generator().manual_seed(11)
    latents, sigmas = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        cond = family.encode_prompts(c, PROMPT * 2, max_token_length=75, clip_skip=1)
        cond = family.condition_batch(c, cond, {})
        pred = family.predict(c.transformer, latents, sigmas, cond)
    return [cond.extra["pooled_projections"], cond.hidden_states, pred]


def max_diff(a, b) -> float:
    """The largest absolute difference between paired tensors."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))

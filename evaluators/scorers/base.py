"""The one small protocol every scorer follows, and what it is given.

A scorer is built once per evaluation run with what never changes (reference images, the
scoring model) and then called for every (checkpoint, LoRA file, strength) with the images
generated there. It returns flat ``{metric name: value}`` entries without the ``eval/`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from trainer.families.base import Conditioning
from trainer.models.components import SDComponents


@dataclass
class ScoreInputs:
    """What one (checkpoint, LoRA, strength) evaluation offers the scorers."""

    images: Sequence[Image.Image] = ()
    """The generated images (empty when no scorer needs generation)."""
    texts: Sequence[str] = ()
    """For each generated image, the text it should match (CLIP-T)."""
    prompts: Sequence[str] = ()
    """For each generated image, the prompt the diffusion model was given (the world oracle)."""
    subject: Sequence[bool] = ()
    """For each generated image, whether its prompt names the subject (``{trigger}``); empty =
    every image does. The fidelity scorers read only these (:func:`subject_images`)."""
    components: SDComponents | None = None
    """The base model with the LoRA active at the current strength (validation loss)."""
    encode: Callable[[list[str]], torch.Tensor] | None = None
    """Prompt encoder with the training's max_token_length and clip_skip (validation loss)."""
    condition: Callable[[list[str]], Conditioning] | None = None
    """The same prompts' whole conditioning (the family's ``encode_prompts``: SDXL's pooled
    embedding too); the validation loss prefers it to ``encode``."""
    context: dict = field(default_factory=dict)
    """Labels of this evaluation (checkpoint, strengths), for messages."""


@runtime_checkable
class Scorer(Protocol):
    name: str
    """Metric family, e.g. ``clip_i``; the config's ``eval.metrics`` lists these."""
    needs_generation: bool
    """False for scores computed without sampling images (validation loss)."""
    random_weights: bool
    """True when the scoring model has random weights: its numbers mean nothing."""

    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        """Scores of ``inputs`` as ``{metric: value}``."""
        ...


def subject_images(inputs: ScoreInputs) -> list[Image.Image]:
    """The generated images whose prompt names the subject: what fidelity scorers (CLIP-I, DINO,
    face identity) compare with the subject's references. An image of another prompt (``a
    photo of {class}``, a base-world prompt) is not meant to look like the subject."""
    images = list(inputs.images)
    if not inputs.subject:
        return images
    if len(inputs.subject) != len(images):
        raise ValueError(f"{len(images)} images but {len(inputs.subject)} subject flags")
    chosen = [image for image, named in zip(images, inputs.subject, strict=True) if named]
    if not chosen:
        raise ValueError(
            "no generated image comes from a prompt that names the subject ('{trigger}'); "
            "fidelity (clip_i, dino, face) has nothing to compare"
        )
    return chosen


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over every pair (row of ``a``, row of ``b``); rows are L2-normalised.

    This is DreamBench's DINO / CLIP-I: every generated image against every real image.
    """
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("mean_pairwise_cosine needs at least one embedding on each side")
    return float((a.double() @ b.double().T).mean())

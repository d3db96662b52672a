"""Evaluation prompts: templates with the subject's trigger, one seed per image index.

``{trigger}`` in a prompt becomes the trigger word the LoRA was trained on; ``{class}`` becomes
the class word (``eval.class_word``, default: the trigger). CLIP-T compares each image with its
prompt where ``{trigger}`` is replaced by the class word instead, because CLIP has never seen
a made-up trigger token ("sks", "ohwx") and would score it as noise.

Only the images of prompts that name the subject (the trigger word, from ``{trigger}`` or
written out) are compared with the subject's reference images (CLIP-I, DINO, face identity): a
prompt without it (``a photo of {class}``, another object) asks for something else, and its
images show what the LoRA does to the rest of the model (CLIP-T and the world oracle still read
them). When no prompt names the trigger (prompts written out with no ``eval.trigger`` set),
every image counts as the subject's, as before.

Image ``k`` of every prompt uses seed ``eval.seed + k``, at every strength, epoch and
checkpoint, so two cells of a grid differ only by what is being compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationItem:
    """One image to generate."""

    prompt_index: int
    image_index: int
    prompt: str
    """What the diffusion model is given."""
    text: str
    """What CLIP-T compares the image with."""
    seed: int
    subject: bool = True
    """Whether the prompt names the subject (the trigger word is in it)."""


def fill(template: str, trigger: str, class_word: str) -> str:
    return template.replace("{trigger}", trigger).replace("{class}", class_word)


def generation_items(
    templates: tuple[str, ...],
    trigger: str,
    class_word: str | None,
    images_per_prompt: int,
    seed: int,
) -> list[GenerationItem]:
    """Every (prompt, image index) to generate, prompt-major."""
    word = class_word or trigger
    prompts = [fill(t, trigger, word) for t in templates]
    named = [names_subject(p, trigger) for p in prompts]
    if not any(named):
        named = [True] * len(prompts)
    return [
        GenerationItem(p, k, prompts[p], fill(t, word, word), seed + k, named[p])
        for p, t in enumerate(templates)
        for k in range(images_per_prompt)
    ]


def names_subject(prompt: str, trigger: str) -> bool:
    """Whether ``prompt`` contains the trigger as whole words (``sks`` in ``a sks dog``, not in
    ``asks``)."""
    return bool(trigger) and re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", prompt) is not None

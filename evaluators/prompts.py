"""Evaluation prompts: templates with the subject's trigger, one seed per image index.

``{trigger}`` in a prompt becomes the trigger word the LoRA was trained on; ``{class}`` becomes
the class word (``eval.class_word``, default: the trigger). CLIP-T compares each image with its
prompt where ``{trigger}`` is replaced by the class word instead, because CLIP has never seen
a made-up trigger token ("sks", "ohwx") and would score it as noise.

Image ``k`` of every prompt uses seed ``eval.seed + k``, at every strength, epoch and
checkpoint, so two cells of a grid differ only by what is being compared.
"""

from __future__ import annotations

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
    return [
        GenerationItem(p, k, fill(t, trigger, word), fill(t, word, word), seed + k)
        for p, t in enumerate(templates)
        for k in range(images_per_prompt)
    ]

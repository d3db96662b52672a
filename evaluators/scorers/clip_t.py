"""CLIP-T: prompt adherence as the cosine between each image and the prompt it was made from.

Two numbers: ``clip_t``, the mean raw cosine (DreamBench's CLIP-T; DreamBooth-SD scores about
0.305), and ``clip_score``, torchmetrics' CLIPScore scale ``100 * max(cos, 0)`` per image,
averaged. The text is the prompt with the trigger replaced by the class word (CLIP does not
know a made-up trigger token), see ``evaluators.prompts``.
"""

from __future__ import annotations

import torch

from evaluators.scorers.base import ScoreInputs
from evaluators.scoring_models import ClipBundle, clip_image_embeddings, clip_text_embeddings


def paired_cosines(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine of image i with text i (rows L2-normalised), shape ``[N]``."""
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            f"one text per image: got {tuple(image_embeddings.shape)} image and "
            f"{tuple(text_embeddings.shape)} text embeddings"
        )
    return (image_embeddings.double() * text_embeddings.double()).sum(-1)


def clip_t_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> dict:
    """``clip_t`` (mean cosine) and ``clip_score`` (mean of ``100 * max(cos, 0)``)."""
    cos = paired_cosines(image_embeddings, text_embeddings)
    return {
        "clip_t": float(cos.mean()),
        "clip_score": float((100.0 * cos.clamp(min=0.0)).mean()),
    }


class ClipTextScorer:
    name = "clip_t"
    needs_generation = True

    def __init__(self, clip: ClipBundle):
        self.clip = clip
        self.random_weights = clip.random_weights
        self._text_cache: dict[str, torch.Tensor] = {}

    def _texts(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if new:
            for text, emb in zip(new, clip_text_embeddings(self.clip, new), strict=True):
                self._text_cache[text] = emb
        return torch.stack([self._text_cache[t] for t in texts])

    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        texts = list(inputs.texts)
        if len(texts) != len(inputs.images):
            raise ValueError(f"CLIP-T: {len(inputs.images)} images but {len(texts)} texts")
        images = clip_image_embeddings(self.clip, list(inputs.images))
        return clip_t_scores(images, self._texts(texts))

"""Scorers, one per file, behind the protocol in ``base``; ``build_scorers`` picks them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evaluators.model_cache import ModelPool
from evaluators.references import ReferenceImage
from evaluators.scorers.base import ScoreInputs, Scorer, mean_pairwise_cosine
from evaluators.settings import EvalSettings

__all__ = ["ScoreInputs", "Scorer", "build_scorers", "mean_pairwise_cosine"]


def build_scorers(
    settings: EvalSettings,
    references: Sequence[ReferenceImage],
    val_images: Sequence[ReferenceImage],
    size: tuple[int, int],
    device: torch.device,
    pool: ModelPool,
) -> list[Scorer]:
    """The scorers of ``settings.metrics``, in that order, with their models from ``pool``."""
    images = [r.image for r in references]
    scorers: list[Scorer] = []
    for metric in settings.metrics:
        if metric == "clip_i":
            from evaluators.scorers.clip_i import ClipImageScorer

            clip = pool.clip(settings.clip_model, device)
            scorers.append(ClipImageScorer(clip, images))
        elif metric == "clip_t":
            from evaluators.scorers.clip_t import ClipTextScorer

            scorers.append(ClipTextScorer(pool.clip(settings.clip_model, device)))
        elif metric == "dino":
            from evaluators.scorers.dino import DinoScorer

            dino = pool.dino(settings.dino_model, device)
            scorers.append(DinoScorer(dino, images))
        elif metric == "face":
            from evaluators.scorers.face_identity import FaceIdentityScorer

            scorers.append(FaceIdentityScorer(images, settings.face_upsample))
        elif metric == "val_loss":
            from evaluators.scorers.val_loss import ValLossScorer

            scorers.append(
                ValLossScorer(
                    [v.image for v in val_images],
                    [v.caption for v in val_images],
                    settings.val_timesteps,
                    settings.val_seed,
                    size,
                    shared_latents=pool.latents,
                )
            )
    return scorers

"""DINO: subject fidelity as the mean pairwise cosine of ViT CLS embeddings (DreamBench).

DreamBench uses DINO ViT-S/16 (``facebook/dino-vits16``): unlike CLIP, DINO was trained to tell
instances of a class apart, so it rewards the *same* subject, not just the same kind of
subject. Real-vs-real images of a subject score about 0.774. Only images of prompts that name
the subject (``{trigger}``) are compared (``base.subject_images``).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from evaluators.scorers.base import ScoreInputs, mean_pairwise_cosine, subject_images
from evaluators.scoring_models import DinoBundle, dino_embeddings


class DinoScorer:
    name = "dino"
    needs_generation = True

    def __init__(self, dino: DinoBundle, references: Sequence[Image.Image]):
        if not references:
            raise ValueError("DINO needs at least one reference image")
        self.dino = dino
        self.random_weights = dino.random_weights
        self.reference_embeddings = dino_embeddings(dino, list(references))

    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        generated = dino_embeddings(self.dino, subject_images(inputs))
        return {"dino": mean_pairwise_cosine(generated, self.reference_embeddings)}

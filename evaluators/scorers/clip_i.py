"""CLIP-I: subject fidelity as the mean pairwise cosine of CLIP image embeddings.

Every generated image of a prompt that names the subject (``{trigger}``) is compared with every
training (reference) image and the cosines are averaged (DreamBench; real-vs-real images of a
subject score about 0.885 with ViT-B/32).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from evaluators.scorers.base import ScoreInputs, mean_pairwise_cosine, subject_images
from evaluators.scoring_models import ClipBundle, clip_image_embeddings


class ClipImageScorer:
    name = "clip_i"
    needs_generation = True

    def __init__(self, clip: ClipBundle, references: Sequence[Image.Image]):
        if not references:
            raise ValueError("CLIP-I needs at least one reference image")
        self.clip = clip
        self.random_weights = clip.random_weights
        self.reference_embeddings = clip_image_embeddings(clip, list(references))

    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        generated = clip_image_embeddings(self.clip, subject_images(inputs))
        return {"clip_i": mean_pairwise_cosine(generated, self.reference_embeddings)}

"""Closed-form checks of the scores on constructed embeddings."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from evaluators.scorers.base import mean_pairwise_cosine
from evaluators.scorers.clip_t import clip_t_scores


def _unit(rows: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(
        torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1
    )


def test_mean_pairwise_cosine_of_identical_sets_of_one_is_one():
    e = _unit(1)
    assert mean_pairwise_cosine(e, e) == pytest.approx(1.0, abs=1e-6)


def test_mean_pairwise_cosine_ignores_order_and_is_symmetric():
    a, b = _unit(5, seed=1), _unit(3, seed=2)
    value = mean_pairwise_cosine(a, b)
    assert mean_pairwise_cosine(a[torch.randperm(5)], b.flip(0)) == pytest.approx(value)
    assert mean_pairwise_cosine(b, a) == pytest.approx(value)
    assert value == pytest.approx(float((a @ b.T).mean()))


def test_the_prompt_an_image_was_built_from_ranks_first():
    texts = _unit(4, seed=3)
    noise = _unit(1, seed=4)[0]
    image = F.normalize(texts[2] + 0.3 * noise, dim=0)  # close to prompt 2
    scores = [clip_t_scores(image[None], texts[i][None])["clip_t"] for i in range(4)]
    assert max(range(4), key=scores.__getitem__) == 2


def test_clip_score_is_100_times_the_cosine_clipped_at_zero():
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    images = torch.tensor([[0.6, 0.8], [-0.6, 0.8]])
    scores = clip_t_scores(images, texts)
    assert scores["clip_t"] == pytest.approx(0.0)  # (0.6 - 0.6) / 2
    assert scores["clip_score"] == pytest.approx(30.0)  # (60 + 0) / 2
    with pytest.raises(ValueError, match="one text per image"):
        clip_t_scores(images, texts[:1])

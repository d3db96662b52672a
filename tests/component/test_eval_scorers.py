"""Scorers on real images with the tiny (random-weight) CLIP and DINO, and the validation loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from evaluators import scoring_models
from evaluators.generate import make_encoder
from evaluators.model_cache import ModelPool
from evaluators.scorers import ScoreInputs
from evaluators.scorers.clip_i import ClipImageScorer
from evaluators.scorers.clip_t import ClipTextScorer
from evaluators.scorers.dino import DinoScorer
from evaluators.scorers.val_loss import ValLossScorer
from trainer.errors import ConfigError, ModelLoadError
from trainer.models.tiny import build_tiny_components


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [
        Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("chelsea", "coffee", "rocket")
    ]


def test_identical_images_score_one_and_order_does_not_matter(photos):
    clip = scoring_models.load_clip("tiny")
    dino = scoring_models.load_dino("tiny")
    for scorer_class, model, key in (
        (ClipImageScorer, clip, "clip_i"),
        (DinoScorer, dino, "dino"),
    ):
        same = scorer_class(model, [photos[0]]).score(ScoreInputs(images=[photos[0]] * 2))
        assert same[key] == pytest.approx(1.0, abs=1e-5)
        scorer = scorer_class(model, photos[:2])
        forward = scorer.score(ScoreInputs(images=photos))[key]
        backward = scorer_class(model, photos[1::-1]).score(ScoreInputs(images=photos[::-1]))[key]
        assert backward == pytest.approx(forward, abs=1e-6)
        assert forward < 1.0 - 1e-4  # different images are not identical
        assert scorer.random_weights


def test_clip_t_is_order_free_and_reports_both_scales(photos):
    scorer = ClipTextScorer(scoring_models.load_clip("tiny"))
    texts = ["a cat", "a cup of coffee", "a rocket"]
    a = scorer.score(ScoreInputs(images=photos, texts=texts))
    b = scorer.score(ScoreInputs(images=photos[::-1], texts=texts[::-1]))
    assert a == pytest.approx(b)
    assert -1.0 <= a["clip_t"] <= 1.0
    assert a["clip_score"] >= max(0.0, 100 * a["clip_t"]) - 1e-6
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        scorer.score(ScoreInputs(images=photos, texts=texts[:2]))


def test_scoring_model_paths_that_do_not_exist_are_errors_not_downloads(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"eval\.clip_model: .*not found: .*no_such_dir"):
        scoring_models.load_clip(str(tmp_path / "no_such_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="eval.dino_model: .* no config.json"):
        scoring_models.load_dino(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        scoring_models.load_clip("lorasweep-tests/not-a-cached-model")


def _val_scorer(photos, **kw) -> ValLossScorer:
    return ValLossScorer(
        photos, ["a cat", "coffee", "a rocket"], (100, 500, 900), 0, (64, 64), **kw
    )


def test_val_loss_is_identical_across_calls_and_follows_the_weights(photos):
    c = build_tiny_components(seed=0)
    encode = make_encoder(c, 75, 1)
    scorer = _val_scorer(photos)
    first = scorer.score(ScoreInputs(components=c, encode=encode))["val_loss"]
    again = _val_scorer(photos).score(ScoreInputs(components=c, encode=encode))["val_loss"]
    assert first == again and np.isfinite(first) and first > 0
    other = build_tiny_components(seed=1)
    changed = scorer.score(ScoreInputs(components=other, encode=make_encoder(other, 75, 1)))
    assert changed["val_loss"] != first
    assert not scorer.needs_generation and not scorer.random_weights


def test_val_loss_timesteps_must_fit_the_schedule(photos):
    c = build_tiny_components(seed=0)
    scorer = ValLossScorer(photos[:1], ["a cat"], (100, 1000), 0, (64, 64))
    with pytest.raises(ConfigError, match=r"eval.val_timesteps: \[1000\] out of range"):
        scorer.score(ScoreInputs(components=c, encode=make_encoder(c, 75, 1)))


def test_tiny_models_are_deterministic_and_kept_by_their_pool():
    pool = ModelPool()
    a = pool.clip("tiny")
    assert pool.clip("tiny") is a and pool.dino("tiny") is pool.dino("tiny")
    assert ModelPool().clip("tiny") is not a  # another pool loads its own
    fresh = scoring_models._tiny_clip().model
    assert all(
        torch.equal(p, q) for p, q in zip(a.model.parameters(), fresh.parameters(), strict=True)
    )


def test_scoring_models_load_from_a_local_directory(tmp_path, photos):
    tiny_clip, tiny_dino = scoring_models._tiny_clip(), scoring_models._tiny_dino()
    for bundle, folder in ((tiny_clip, tmp_path / "clip"), (tiny_dino, tmp_path / "dino")):
        bundle.model.save_pretrained(folder)
        bundle.image_processor.save_pretrained(folder)
    tiny_clip.tokenizer.save_pretrained(tmp_path / "clip")
    clip = scoring_models.load_clip(str(tmp_path / "clip"))
    dino = scoring_models.load_dino(str(tmp_path / "dino"))
    assert not clip.random_weights and not dino.random_weights  # read from disk, not "tiny"
    tiny_clip.model.eval()
    tiny_dino.model.eval()
    assert torch.allclose(
        scoring_models.clip_image_embeddings(clip, photos),
        scoring_models.clip_image_embeddings(tiny_clip, photos),
        atol=1e-5,
    )
    assert torch.allclose(
        scoring_models.clip_text_embeddings(clip, ["a cat"]),
        scoring_models.clip_text_embeddings(tiny_clip, ["a cat"]),
        atol=1e-5,
    )
    assert torch.allclose(
        scoring_models.dino_embeddings(dino, photos),
        scoring_models.dino_embeddings(tiny_dino, photos),
        atol=1e-5,
    )


def test_fidelity_scorers_compare_only_images_of_prompts_that_name_the_subject(photos):
    """``a photo of {class}`` or another object is not meant to look like the subject: its
    images leave CLIP-I and DINO unchanged (CLIP-T still reads them)."""
    for scorer_class, model, key in (
        (ClipImageScorer, scoring_models.load_clip("tiny"), "clip_i"),
        (DinoScorer, scoring_models.load_dino("tiny"), "dino"),
    ):
        scorer = scorer_class(model, [photos[0]])
        alone = scorer.score(ScoreInputs(images=[photos[0]]))[key]
        mixed = ScoreInputs(images=[photos[0], photos[2]], subject=[True, False])
        assert scorer.score(mixed)[key] == pytest.approx(alone, abs=1e-6)
        every = scorer.score(ScoreInputs(images=[photos[0], photos[2]]))[key]
        assert every < alone - 1e-4  # the unflagged image counts when no flags are given
        with pytest.raises(ValueError, match="2 images but 1 subject flags"):
            scorer.score(ScoreInputs(images=photos[:2], subject=[True]))
        with pytest.raises(ValueError, match="no generated image comes from a prompt"):
            scorer.score(ScoreInputs(images=photos[:2], subject=[False, False]))

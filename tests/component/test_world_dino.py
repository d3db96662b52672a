"""The shipped world DINO model loads through the scorer code unchanged, and its features tell
the subject from other stars (what the DINO score must do in this world)."""

from __future__ import annotations

import json

import numpy as np
import torch

from evaluators.scorers import ScoreInputs
from evaluators.scorers.dino import DinoScorer
from evaluators.scoring_models import dino_embeddings, load_dino
from world.paths import DINO_DIR
from world.scene import Scene, render, subject_scene
from world.train_dino import REPORT_FILE, features


def _render(scenes, seed):
    rng = np.random.default_rng(seed)
    return [render(s, rng) for s in scenes]


def test_the_scorer_loads_the_world_dino_and_sees_what_training_saw():
    bundle = load_dino(str(DINO_DIR))
    assert not bundle.random_weights
    assert type(bundle.model).__name__ == "Dinov2Model"
    images = _render([subject_scene("pink", "left"), Scene("circle", "red", "teal", "right")], 1)
    through_scorer = dino_embeddings(bundle, images)
    pixels = torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1) for im in images])
    direct = features(bundle.model, pixels.float() / 255)
    torch.testing.assert_close(through_scorer, direct, atol=1e-4, rtol=0)


def test_dino_scores_the_subject_above_base_stars_on_new_backgrounds():
    bundle = load_dino(str(DINO_DIR))
    references = _render(
        [subject_scene(b, p) for b in ("white", "teal") for p in ("left", "right")], 2
    )
    scorer = DinoScorer(bundle, references)
    new_context = [subject_scene(b, "center") for b in ("black", "pink")]
    stars = [Scene("star", c, b, "center") for c in ("red", "yellow") for b in ("black", "pink")]
    subject = scorer.score(ScoreInputs(images=_render(new_context, 3)))["dino"]
    other = scorer.score(ScoreInputs(images=_render(stars, 4)))["dino"]
    assert subject > other + 0.1, (subject, other)


def test_the_training_report_states_its_probe_accuracy():
    report = json.loads((DINO_DIR / REPORT_FILE).read_text())
    probe = report["probe"]
    # labels were never used in training: colour is identity here and must be in the features
    assert probe["colour_nn_accuracy"] >= 0.95 and probe["background_nn_accuracy"] >= 0.95
    assert probe["shape_nn_accuracy"] > 0.4  # chance: 0.25
    assert probe["subject_subject_cosine"] > probe["subject_star_cosine"] + 0.1


def test_background_swapped_views_show_the_same_object_on_another_background():
    from world.scene import BACKGROUNDS
    from world.train_dino import render_pairs
    from world.train_oracle import labelled_scenes

    scenes = labelled_scenes(12, seed=3, subject_fraction=0.5)
    same, moved = render_pairs(scenes, seed=7)
    assert same.shape == moved.shape == (12, 64, 64, 3)
    for scene, a, b in zip(scenes, same, moved, strict=True):
        corner_a, corner_b = a[0, 0].astype(int), b[0, 0].astype(int)
        assert np.abs(corner_a - np.array(BACKGROUNDS[scene.background])).max() <= 12
        assert np.abs(corner_a - corner_b).max() > 30  # another background
        # The object covers the same pixels: where each image departs from its background.
        mask_a = np.abs(a.astype(int) - corner_a).max(-1) > 40
        mask_b = np.abs(b.astype(int) - corner_b).max(-1) > 40
        assert mask_a.sum() > 30 and (mask_a & mask_b).sum() / (mask_a | mask_b).sum() > 0.6

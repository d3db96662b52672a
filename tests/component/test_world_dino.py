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

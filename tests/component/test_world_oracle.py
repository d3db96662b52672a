"""The shipped world oracle: accurate on fresh world images, its scorer's numbers on images
whose truth is known, and the objective, the kept epoch and the diagnosis never read it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from evaluators.callback import EvaluationCallback
from evaluators.harness import Harness
from evaluators.scorers import ScoreInputs
from evaluators.scorers.oracle import OracleScorer
from evaluators.settings import read_eval_settings
from sweeper.checks import metric_name_problems
from trainer.errors import ConfigError
from world.augment import degrade
from world.oracle import judge_images, load_oracle
from world.paths import ORACLE_DIR
from world.scene import (
    BACKGROUNDS,
    POSITIONS,
    Scene,
    caption,
    render,
    subject_prompts,
    subject_scene,
)
from world.train_oracle import head_accuracy, labelled_scenes, render_scenes

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def oracle():
    return load_oracle(ORACLE_DIR)


def test_the_oracle_reads_every_head_of_fresh_world_images_at_95_percent(oracle):
    scenes = labelled_scenes(600, seed=424242)  # a seed no training or report set uses
    clean = torch.from_numpy(render_scenes(scenes, 424242)).permute(0, 3, 1, 2).float() / 255
    looks_generated = degrade(clean, torch.Generator().manual_seed(7))
    for images in (clean, looks_generated):
        accuracy = head_accuracy(oracle, images, scenes)
        assert set(accuracy) == {"subject", "shape", "colour", "background", "position"}
        assert min(accuracy.values()) >= 0.95, accuracy


def _render(scenes: list[Scene], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [render(s, rng) for s in scenes]


def _score(oracle, prompts: list[str], images: list[Image.Image]) -> dict[str, float]:
    scorer = OracleScorer(prompts, oracle=oracle)
    return scorer.score(ScoreInputs(images=images, prompts=prompts))


def test_the_scorer_sees_the_subject_exactly_where_it_is(oracle):
    prompts = [p.prompt for p in subject_prompts()]
    truths = subject_prompts()
    right = _render([subject_scene(t.background, t.position) for t in truths], seed=11)
    scores = _score(oracle, prompts, right)
    assert scores["oracle_subject"] == 1.0
    assert scores["oracle_adherence"] == 1.0 and scores["oracle_success"] == 1.0
    # the base world in the subject's place: a yellow star where the subject was asked for
    stars = [Scene("star", "yellow", t.background, t.position) for t in truths]
    missing = _score(oracle, prompts, _render(stars, seed=12))
    assert missing["oracle_subject"] == 0.0 and missing["oracle_success"] == 0.0
    assert missing["oracle_background"] == 1.0  # the context is still right
    # base prompts answered with base scenes: nothing leaks; with the subject: all of it does
    base = [Scene("circle", "red", "pink", "left"), Scene("square", "blue", "black", "right")]
    base_prompts = [caption(s) for s in base]
    assert _score(oracle, base_prompts, _render(base, 13))["oracle_subject_leak"] == 0.0
    leaked = _render([subject_scene(s.background, s.position) for s in base], 14)
    leak = _score(oracle, base_prompts, leaked)
    assert leak["oracle_subject_leak"] == 1.0 and leak["oracle_adherence_base"] == 0.5


def test_adherence_drops_when_the_training_background_leaks_in(oracle):
    truths = subject_prompts()  # black and pink backgrounds: never in the training images
    prompts = [t.prompt for t in truths]
    on_white = _render([subject_scene("white", t.position) for t in truths], seed=21)
    scores = _score(oracle, prompts, on_white)
    assert scores["oracle_subject"] == 1.0
    assert scores["oracle_background"] == 0.0 and scores["oracle_position"] == 1.0
    assert scores["oracle_adherence"] == 0.5 and scores["oracle_success"] == 0.0
    judged = judge_images(oracle, on_white, truths)
    assert judged["subject"] == 1.0 and judged["adherence"] == 0.5


def test_every_background_and_position_of_the_subject_is_recognised(oracle):
    combos = [(b, p) for b in BACKGROUNDS for p in POSITIONS]
    images = _render([subject_scene(b, p) for b, p in combos], seed=31)
    readings = oracle.read(images)
    assert [(r.subject, r.background, r.position) for r in readings] == [
        (True, b, p) for b, p in combos
    ]


# --- the oracle only reports -------------------------------------------------------------

MODEL = {
    "path": "tiny",
    "weights_seed": 0,
    "prediction_type": "epsilon",
    "clip_skip": 1,
    "vae": None,
    "single_file_config": "sd15",
    "resolution": 64,
}
DATA = {"dir": str(PROJECT / "data/world/img"), "max_token_length": 75}
EVAL = {
    "metrics": ["clip_i", "clip_t", "oracle"],
    "trigger": "sks star",
    "class_word": "star",
    "prompts": ["a {trigger} on a pink background, on the left", "a red star"],
    "steps": 2,
    "strengths": [0.5, 1.0],
    "unet_strengths": [],
    "te_strengths": [],
    "max_reference_images": 2,
    "save_grids": False,
}


class _FixedOracle:
    """Says the same thing of every image: what the test sets, not what it sees."""

    def __init__(self, reading):
        self.reading = reading

    def read(self, images):
        return [self.reading] * len(images)


def _lora(path: Path, seed: int) -> Path:
    from trainer.models.tiny import build_tiny_components
    from trainer.networks import kohya_format as kf
    from trainer.networks.lora import apply_lora

    c = build_tiny_components(seed=0)
    cfg = {"type": "lora", "dim": 4, "alpha": 2, "conv_dim": None, "conv_alpha": None,
           "dropout": 0.0, "train_unet": True, "train_text_encoder": True}  # fmt: skip
    net = apply_lora(c.unet, c.text_encoder, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules:
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.3)
    kf.save_lora(path, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    return path


def test_the_objective_best_epoch_and_diagnosis_ignore_the_oracle(tmp_path, oracle):
    files = [_lora(tmp_path / f"e{k}.safetensors", seed=k) for k in (1, 2, 3)]
    real = oracle.read(_render([subject_scene("pink", "left")], 41))[0]
    wrong = dataclasses.replace(real, subject=False, background="teal", position="right")
    outcomes = []
    for reading in (real, wrong):
        harness = Harness(read_eval_settings(EVAL), MODEL, DATA, tmp_path / "cache")
        (scorer,) = [s for s in harness.scorers() if isinstance(s, OracleScorer)]
        scorer.oracle = _FixedOracle(reading)
        callback = EvaluationCallback({"run_name": "x"}, output_dir=None, harness=harness)
        for epoch, path in enumerate(files, start=1):
            callback.evaluate(epoch, path, grid=True)
        outcomes.append(callback)
    a, b = outcomes
    assert a.results[1]["eval/oracle_subject"] == 1.0 and b.results[1]["eval/oracle_subject"] == 0
    # prompted attributes: subject prompt background + position, "a red star" shape + colour
    # (a subject reading has no base colour): 3 of 4 hold for the first oracle, 1 for the second
    assert a.results[1]["eval/oracle_adherence@unet0.5_te0.5"] == 0.75
    assert b.results[1]["eval/oracle_adherence@unet0.5_te0.5"] == 0.25
    assert a.best_epoch == b.best_epoch
    for epoch in (1, 2, 3):
        ours = {
            k: v for k, v in a.results[epoch].items() if "oracle" not in k and "seconds" not in k
        }
        theirs = {
            k: v for k, v in b.results[epoch].items() if "oracle" not in k and "seconds" not in k
        }
        assert ours == theirs  # objective, fidelity, adherence, diagnosis: all unchanged
        assert "eval/objective" in ours and "eval/best_strength" in ours


def test_no_sweep_may_optimise_an_oracle_metric_and_the_oracle_is_not_alone():
    problems = metric_name_problems(
        OmegaConf.create(EVAL),
        ["eval/objective", "eval/oracle_success", "eval/oracle_subject@unet0.5_te0.5"],
    )
    assert len(problems) == 2
    assert all("world oracle's" in p and "eval/objective" in p for p in problems)
    with pytest.raises(ConfigError, match="besides the oracle"):
        read_eval_settings({**EVAL, "metrics": ["oracle"]})

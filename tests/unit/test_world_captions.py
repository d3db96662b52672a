"""The world's caption grammar read back into attributes, and the oracle's metric arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.scorers.oracle import oracle_prompt_problems, oracle_scores
from world.captions import PromptTruth, parse_prompt
from world.scene import base_prompts, caption, random_base_scene, subject_prompts


def test_every_eval_prompt_reads_back_as_its_ground_truth():
    for p in subject_prompts() + base_prompts():
        t = parse_prompt(p.prompt)
        assert (t.subject, t.shape, t.colour, t.background, t.position) == (
            p.subject, p.shape, p.colour, p.background, p.position
        )  # fmt: skip


def test_partial_captions_leave_unsaid_attributes_open():
    rng = np.random.default_rng(3)
    seen_missing = set()
    for _ in range(300):
        scene = random_base_scene(rng)
        truth = parse_prompt(caption(scene, rng, full=False))
        assert truth.shape == scene.shape and not truth.subject
        for name in ("colour", "background", "position"):
            value = getattr(truth, name)
            assert value in (None, getattr(scene, name))
            if value is None:
                seen_missing.add(name)
    assert seen_missing == {"colour", "background", "position"}
    assert parse_prompt("a star") == PromptTruth(False, "star", None, None, None)
    assert parse_prompt("a sks star, in the center").attributes() == {"position": "center"}


@pytest.mark.parametrize(
    "text", ["a photo of sks", "a purple circle", "a red circle on a grey background", ""]
)
def test_a_text_outside_the_grammar_is_an_error_naming_it(text):
    with pytest.raises(ValueError, match="is not a world caption; expected"):
        parse_prompt(text)


def test_prompt_templates_are_checked_after_filling_the_trigger():
    good = ["a {trigger} on a pink background, on the left", "a blue square"]
    assert oracle_prompt_problems(good, "sks star", "star") == []
    problems = oracle_prompt_problems(["a photo of {trigger}", *good], "sks star", "star")
    assert len(problems) == 1 and problems[0].startswith("eval.prompts[0]: prompt 'a photo of")


class _Reading:
    def __init__(self, subject, background, position, shape="star", colour=None):
        self.subject, self.background, self.position = subject, background, position
        self.shape, self.colour = shape, colour

    def holds(self, attribute, value):
        return getattr(self, attribute) == value


def test_oracle_scores_count_subject_and_each_prompted_attribute():
    subj = parse_prompt("a sks star on a pink background, on the left")
    base = parse_prompt("a red star on a black background, in the center")
    truths = [subj, subj, base, base]
    readings = [
        _Reading(True, "pink", "left"),  # all right
        _Reading(True, "teal", "left"),  # subject, wrong background
        _Reading(False, "black", "center", "star", "red"),  # all right
        _Reading(True, "black", "right"),  # the subject leaked in, position and colour wrong
    ]
    s = oracle_scores(truths, readings)
    assert s["oracle_subject"] == 1.0 and s["oracle_subject_leak"] == 0.5
    assert s["oracle_success"] == 0.5
    assert s["oracle_background"] == 0.75 and s["oracle_position"] == 0.75
    assert s["oracle_colour"] == 0.5 and s["oracle_shape"] == 1.0
    assert s["oracle_adherence_subject"] == 3 / 4
    assert s["oracle_adherence_base"] == 6 / 8
    assert s["oracle_adherence"] == 9 / 12
    only_subject = oracle_scores(truths[:2], readings[:2])
    assert "oracle_subject_leak" not in only_subject and "oracle_colour" not in only_subject

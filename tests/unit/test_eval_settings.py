"""The eval config group: defaults compose and validate; bad values are all named at once."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from evaluators.prompts import generation_items
from evaluators.settings import eval_config_problems, read_eval_settings
from trainer.errors import ConfigError


def test_default_and_dreambench_groups_compose_and_validate(compose):
    settings = read_eval_settings(compose().eval)
    assert settings.clip_model == settings.dino_model == "tiny"
    assert settings.metrics == ("clip_i", "clip_t", "dino", "val_loss")
    assert settings.fidelity_weight == 0.5 and settings.checkpoints == ()
    real = read_eval_settings(compose("eval=dreambench").eval)
    assert real.clip_model == "openai/clip-vit-base-patch32"
    assert real.images_per_prompt == 4 and len(real.prompts) == 6


def test_strength_pairs_are_diagonal_then_grid_then_one_without_repeats():
    s = read_eval_settings(
        {"strengths": [0.5, 1.5], "unet_strengths": [0.5, 1.0], "te_strengths": [1.0]}
    )
    assert s.strength_pairs() == [(0.5, 0.5), (1.5, 1.5), (0.5, 1.0), (1.0, 1.0)]


def test_checkpoint_entries_accept_paths_and_mappings():
    s = read_eval_settings(
        OmegaConf.create({"checkpoints": ["tiny", {"path": "/m/a.safetensors", "clip_skip": 2}]})
    )
    assert s.checkpoints == ({"path": "tiny"}, {"path": "/m/a.safetensors", "clip_skip": 2})


def test_every_bad_key_is_reported_with_its_value_and_what_is_allowed():
    bad = {
        "metrics": ["clip_i", "fid"],
        "sampler": "heun",
        "steps": 0,
        "strengths": [],
        "unet_strengths": [0.5],
        "te_strengths": [],
        "checkpoints": [{"path": "/m/a.safetensors", "colour": 1}],
        "objective": {"fidelity_weight": 1.5},
        "width": 100,
        "precision": "fp8",
    }
    with pytest.raises(ConfigError) as info:
        read_eval_settings(bad)
    text = str(info.value)
    for fragment in (
        "eval.metrics: ['fid']",
        "eval.sampler: 'heun'",
        "dpmpp_2m",
        "eval.steps: 0",
        "eval.strengths: []",
        "eval.unet_strengths/te_strengths",
        "['colour']",
        "eval.objective.fidelity_weight: 1.5",
        "eval.width: 100",
        "eval.precision: 'fp8'",
    ):
        assert fragment in text
    assert len(info.value.problems) == 9  # the two grid lists make one problem
    assert eval_config_problems(bad) == info.value.problems
    assert eval_config_problems({}) == []


def test_prompts_fill_trigger_for_the_model_and_class_word_for_clip():
    items = generation_items(
        ("a photo of {trigger}", "{trigger} {class} at night"), "ohwx", "cat", 2, 10
    )
    assert [(i.prompt_index, i.image_index, i.seed) for i in items] == [
        (0, 0, 10),
        (0, 1, 11),
        (1, 0, 10),
        (1, 1, 11),
    ]
    assert items[0].prompt == "a photo of ohwx" and items[0].text == "a photo of cat"
    assert items[2].prompt == "ohwx cat at night" and items[2].text == "cat cat at night"
    same = generation_items(("a photo of {trigger}",), "penny", None, 1, 0)
    assert same[0].text == same[0].prompt == "a photo of penny"


def test_counts_that_become_lists_are_bounded():
    problems = eval_config_problems({"images_per_prompt": 10**8, "steps": 10**9})
    assert problems == [
        "eval.images_per_prompt: 100000000 is not allowed; allowed: an integer >= 1 and <= 100",
        "eval.steps: 1000000000 is not allowed; allowed: an integer >= 1 and <= 1000",
    ]
    assert eval_config_problems({"images_per_prompt": 100, "steps": 1000}) == []


def test_only_prompts_with_the_trigger_name_the_subject():
    templates = ("a photo of {trigger}", "a photo of {class}", "a red car", "ohwx at night",
                 "a cat asks ohwxx")  # fmt: skip
    items = generation_items(templates, "ohwx", "dog", 1, 0)
    assert [i.subject for i in items] == [True, False, False, True, False]
    # Prompts that never name the trigger (written out, no eval.trigger): all the subject's.
    assert [i.subject for i in generation_items(("a photo of sks",), "", None, 2, 0)] == [True] * 2

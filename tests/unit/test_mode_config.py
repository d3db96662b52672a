"""The train groups of DreamBooth and textual inversion: selection, experiments, bad input."""

from __future__ import annotations

import pytest

from trainer.errors import ConfigError
from trainer.validate import validate_run


def problems_of(cfg) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_run(cfg)
    return info.value.problems


def test_mode_alone_is_refused_with_the_group_switch_named(compose):
    (problem,) = problems_of(compose("train.mode=dreambooth"))
    assert problem.startswith("train.mode: 'dreambooth'") and "`train=dreambooth`" in problem
    (problem,) = problems_of(compose("train=textual_inversion", "train.mode=lora"))
    assert "`train=lora`" in problem and "textual_inversion" in problem
    (problem,) = problems_of(compose("train.mode=finetune"))
    assert "'finetune'" in problem and "dreambooth" in problem


def test_mode_groups_and_experiments_compose_and_validate(compose):
    cfg = compose("train=dreambooth")
    validate_run(cfg)
    assert cfg.train.mode == "dreambooth" and cfg.train.learning_rate == 2e-6
    assert cfg.train.max_train_steps == 400 and cfg.train.batch_size == 4
    assert cfg.train.min_snr_gamma is None  # loop keys come from the lora group
    cfg = compose("train=textual_inversion")
    validate_run(cfg)
    assert list(cfg.train.tokens) == ["<chelsea-cat>"] and cfg.train.max_train_steps == 2000

    easy = compose("+experiment=easy_prodigy")
    validate_run(easy)
    assert easy.optimizer.name == "Prodigy" and easy.optimizer.lr == 1.0
    assert easy.scheduler.name == "constant" and easy.network.alpha == 1
    assert easy.train.min_snr_gamma == 5 and easy.data.max_token_length == 225

    blog = compose("+experiment=dreambooth_blog", "train.prior_preservation=true")
    validate_run(blog)
    assert blog.train.mode == "dreambooth" and blog.optimizer.name == "AdamW"
    assert blog.data.reg_dir.endswith("class_images/tiny") and blog.train.class_prompt == "cat"

    assert compose("+experiment=pivotal_tuning_ti").train.mode == "textual_inversion"
    (problem,) = problems_of(compose("+experiment=pivotal_tuning"))
    assert problem.startswith("train.init_embedding:")


def test_dreambooth_bad_values_are_each_named(compose):
    problems = problems_of(
        compose(
            "train=dreambooth",
            "train.prior_preservation=true",
            "train.learning_rate=-1",
            "train.num_class_images=0",
            "train.save_lora_dim=0",
            "train.lora_clamp_quantile=1.5",
            "train.scale_weight_norms=1.0",
        )
    )
    text = "\n".join(problems)
    for key in (
        "train.learning_rate: -1",
        "train.num_class_images: 0",
        "train.save_lora_dim: 0",
        "train.lora_clamp_quantile: 1.5",
        "train.scale_weight_norms: 1.0",
        "train.class_prompt: None",
        "data.reg_dir: null",
    ):
        assert key in text, key
    (problem,) = problems_of(
        compose(
            "train=dreambooth",
            "train.prior_preservation=true",
            "train.class_prompt=a/b",
            "data.reg_dir=/tmp/reg",
        )
    )
    assert "'a/b'" in problem and "'/'" in problem


def test_textual_inversion_bad_values_are_each_named(compose, tmp_path):
    problems = problems_of(
        compose(
            "train=textual_inversion",
            "train.tokens=['<Penny>','has space']",
            "train.init_word=''",
            "train.num_vectors_per_token=0",
            "train.embedding_format=bin",
            "train.caption_placeholder=append",
            f"train.init_embedding={tmp_path / 'missing.safetensors'}",
        )
    )
    text = "\n".join(problems)
    for key in (
        "train.tokens: '<Penny>'",
        "train.tokens: 'has space'",
        "train.num_vectors_per_token: 0",
        "train.embedding_format: 'bin'",
        "train.caption_placeholder: 'append'",
        "missing.safetensors' does not exist",
    ):
        assert key in text, key
    (problem,) = problems_of(compose("train=textual_inversion", "train.tokens=[]"))
    assert problem.startswith("train.tokens: []")


def test_counts_that_become_lists_or_tensors_are_bounded(compose):
    problems = problems_of(
        compose(
            "train=dreambooth",
            "train.num_class_images=100000000",
            "train.class_sample_steps=1000000",
        )
    )
    text = "\n".join(problems)
    assert "train.num_class_images: 100000000 must be an integer >= 1 and <= 10,000" in text
    assert "train.class_sample_steps: 1000000 must be an integer >= 1 and <= 1,000" in text
    (problem,) = problems_of(
        compose("train=textual_inversion", "train.num_vectors_per_token=100000000")
    )
    assert problem.startswith("train.num_vectors_per_token: 100000000 must be an integer >= 1")
    assert "<= 75" in problem and "75 tokens" in problem

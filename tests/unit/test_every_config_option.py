"""Every option of every config group composes and passes the checks a run and a sweep make
before any model loads, and those checks are the builders' own rules (they cannot disagree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweeper.checks import run_problems
from sweeper.search_config import build_search_space, read_settings
from trainer.data.dataset import DataOptions
from trainer.errors import ConfigError
from trainer.validate import validate_run

CONF = Path(__file__).resolve().parents[2] / "conf"
# Groups every config has (defaults list) and the optional ones (`+group=option`).
GROUPS = ("model", "data", "network", "optimizer", "scheduler", "train", "eval", "tracking")
OPTIONAL = ("category", "experiment")
SEARCH = "search"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def group_options(name: str) -> list[str] | None:
    return options(name) if (CONF / name).is_dir() else None


CASES = [
    *[(g, o) for g in (*GROUPS, SEARCH) for o in options(g)],
    *[(g, o) for g in OPTIONAL for o in options(g)],
]


def test_the_cases_cover_every_option_file():
    on_disk = {(p.parent.name, p.stem) for p in CONF.glob("*/*.yaml") if p.parent.name != "paths"}
    assert on_disk == set(CASES)
    assert len([c for c in CASES if c[0] == "category"]) == 9  # A..I
    assert len([c for c in CASES if c[0] == "experiment"]) == 8


def _overrides(group: str, option: str, tmp_path: Path) -> list[str]:
    override = f"+{group}={option}" if group in OPTIONAL else f"{group}={option}"
    extra = []
    if group == "model" and option in ("sd15", "sdxl", "flux"):
        # A real SD 1.5 / SDXL / Flux file is the user's; an existing path stands in for it
        # (nothing loads). A Flux transformer file takes its other parts from model.components.
        checkpoint = tmp_path / f"{option}.safetensors"
        checkpoint.write_bytes(b"")
        extra.append(f"model.path={checkpoint}")
        if option == "flux":
            extra.append("model.components=black-forest-labs/FLUX.1-dev")
    if group == "experiment" and option == "pivotal_tuning":
        # Its one required input, the stage-1 embedding file (the experiment says so).
        embedding = tmp_path / "subject_ti.safetensors"
        embedding.write_bytes(b"")
        extra.append(f"train.init_embedding={embedding}")
    return [override, *extra]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_passes_the_run_and_sweep_checks(compose, tmp_path, group, option):
    cfg = compose(*_overrides(group, option, tmp_path))
    # What a single run and every trial check (the sweeper's eval, metric and key checks).
    if (group, option) == ("eval", "dreambench") and _offline_uncached(cfg.eval.clip_model):
        # Its hub models are read from the local cache only (the tests are offline): without
        # them it is refused before training, naming both; with the tiny models it passes.
        with pytest.raises(ConfigError) as err:
            validate_run(cfg, extra_checks=[run_problems])
        assert [p.split(":")[0] for p in err.value.problems] == [
            "eval.clip_model",
            "eval.dino_model",
        ]
        cfg = compose(
            *_overrides(group, option, tmp_path), "eval.clip_model=tiny", "eval.dino_model=tiny"
        )
    validate_run(cfg, extra_checks=[run_problems])
    # What the sweep checks before its first trial.
    read_settings(cfg.search)
    if (group, option) == ("network", "ia3"):
        # (IA)^3 has no rank: the default space's network.dim would fail every trial, so the
        # sweep refuses it up front; without the rank parameters it sweeps.
        with pytest.raises(ConfigError, match=r"search.params.network.dim: value 4: network.dim"):
            build_search_space(cfg.search, cfg, [], group_options)
        cfg = compose(*_overrides(group, option, tmp_path), "search.params.network=null")
    build_search_space(cfg.search, cfg, [], group_options)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.bucket_reso_steps=4", "data.bucket_reso_steps: 4 must be a multiple of 8"),
        ("data.min_bucket_reso=36", "data.min_bucket_reso: 36 must be a multiple of"),
        ("data.resolution=100", "data.resolution"),
        ("data.flip_aug=maybe", "data.flip_aug"),
        ("data.caption_separator=''", "data.caption_separator"),
        ("data.cache_latents=1", "data.cache_latents"),
        ("model.weights_seed=abc", "model.weights_seed"),
    ],
)
def test_validation_refuses_what_the_builders_refuse(compose, override, key):
    """Each of these passed validation before and failed only after the model had loaded."""
    cfg = compose(override)
    with pytest.raises(ConfigError) as builder:
        DataOptions.from_config(cfg.data) if override.startswith("data.") else _model(cfg)
    with pytest.raises(ConfigError) as validation:
        validate_run(cfg)
    assert key in str(validation.value)
    for problem in builder.value.problems:
        assert problem in validation.value.problems


def _offline_uncached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return offline and not isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def _model(cfg):
    from trainer.models.loading import read_model_settings

    return read_model_settings(cfg.model)

"""A rerun of a study: the data must be the one its finished trials saw, and a seeded sampler
must not propose the first trials' parameters again."""

from __future__ import annotations

import dataclasses
import logging

import optuna
from omegaconf import DictConfig

from sweeper.search_config import SearchSettings
from sweeper.search_space import SearchSpace
from sweeper.study import DONE, build_sampler
from trainer.errors import ConfigError

log = logging.getLogger("sweeper")

DATA_HASH_ATTR = "data_hash"


def check_data(config: DictConfig, study: optuna.Study, space: SearchSpace) -> None:
    """Record the data's hash on the study; refuse to go on when it changed since trials
    finished on it (their values would be compared with trials on other images)."""
    if "data" not in config or any(k.startswith("data.") for k in space.keys):
        return
    from sweeper.provenance import data_hash_of

    digest = data_hash_of(config.data)
    if digest is None:
        return
    recorded = study.user_attrs.get(DATA_HASH_ATTR)
    finished = any(t.state in DONE for t in study.get_trials(deepcopy=False))
    if recorded and recorded != digest and finished:
        raise ConfigError(
            f"data.dir: the data changed since study {study.study_name!r} began (data hash "
            f"{recorded[:12]} recorded by its finished trials, {digest[:12]} now: images, "
            "captions or the regularisation folder differ). Restore the data, or start a "
            "new study with search.study_name=<a new name>"
        )
    if recorded != digest:
        study.set_user_attr(DATA_HASH_ATTR, digest)


def reseed(study: optuna.Study, settings: SearchSettings, space: SearchSpace) -> None:
    """A seeded sampler starts its random stream again in every process: on a rerun it
    would propose the first trials' parameters again. Seed it with seed + the number of
    trials the study already has (a new study keeps the seed as given)."""
    n = len(study.get_trials(deepcopy=False))
    if not n or settings.sampler_seed is None or settings.sampler == "grid":
        return
    seed = settings.sampler_seed + n
    study.sampler = build_sampler(dataclasses.replace(settings, sampler_seed=seed), space)
    log.info("resuming study %s (%d trials): sampler seed %d", study.study_name, n, seed)

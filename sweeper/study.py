"""The Optuna side of a sweep: sampler, pruner, study name, and counting trials (the storage
is ``sweeper.storage``)."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from sweeper.search_config import SearchSettings
from sweeper.search_space import SearchSpace
from trainer.errors import ConfigError

log = logging.getLogger(__name__)

# Trials that count towards n_trials: a pruned trial is a finished answer too.
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# Overrides that do not change what a trial trains: left out of the derived study name.
_BOOKKEEPING = ("search.", "hydra.", "hydra/", "paths.", "optuna.")


def build_sampler(settings: SearchSettings, space: SearchSpace) -> optuna.samplers.BaseSampler:
    name, seed, args = settings.sampler, settings.sampler_seed, dict(settings.sampler_args)
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **args)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **args)
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed, **args)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **args)
        return optuna.samplers.NSGAIISampler(seed=seed, **args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.sampler.{name}: the sampler rejects {args}: {exc}") from exc


def build_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    name, args = settings.pruner, dict(settings.pruner_args)
    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    try:
        return classes[name](**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.pruner.{name}: the pruner rejects {args}: {exc}") from exc


def is_bookkeeping(override_key: str) -> bool:
    key = override_key.lstrip("+~")
    return key.startswith(_BOOKKEEPING) or key in ("search", "hydra", "paths")


def derive_study_name(
    prefix: str, fixed: Iterable[str], space: SearchSpace, settings: SearchSettings
) -> str:
    """A stable name for "this experiment": the fixed overrides that change training, the
    search space and the objectives. The same command finds the same study again; budget,
    storage and launcher overrides do not change it."""
    keep = sorted(o for o in fixed if not is_bookkeeping(o.split("=", 1)[0]))
    spec = {
        "overrides": keep,
        "space": [{**p.__dict__, "choices": p.choices and list(p.choices)} for p in space.params],
        "metrics": list(settings.metrics),
        "directions": list(settings.directions),
    }
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def open_study(
    name: str,
    storage: BaseStorage,
    settings: SearchSettings,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Create the study or load it (a rerun resumes); directions must match an existing one."""
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=build_pruner(settings),
            directions=list(settings.directions),
            load_if_exists=True,
        )
    except ValueError as exc:
        raise ConfigError(f"search.directions: study {name!r} exists with others: {exc}") from exc
    if list(study.directions) != [
        optuna.study.StudyDirection[d.upper()] for d in settings.directions
    ]:
        raise ConfigError(
            f"search.directions: study {name!r} was created with "
            f"{[d.name.lower() for d in study.directions]}, not {list(settings.directions)}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(settings.metrics))
    return study


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def n_done(counts: dict[str, int]) -> int:
    return sum(counts[state.name] for state in DONE)


def tell(study: optuna.Study, trial: optuna.Trial, values=None, state=None) -> None:
    """``study.tell``, tolerating the grid sampler's ``study.stop()`` on its last point: that
    call only works inside ``study.optimize``; the state is stored before it raises, and the
    sweep loop ends a grid by ``is_exhausted`` itself."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise

"""The ``search`` config group, read and checked as a whole before any trial starts.

``read_settings`` checks the study settings (sampler, pruner, objectives, budget, storage,
heartbeat); ``build_search_space`` merges the searched parameters from three places, later ones
winning: ``search.params``, the ranges of ``+category=X`` (``category.search``, or for the
config's ``model.family`` those of ``search.category_families``, turned into parameters by
``search.category_ranges``) and sweeps given on the command line
(``network.dim=8,16``); then drops every key the command line fixes (``optimizer=prodigy``).
Every problem is reported at once, each naming its key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from sweeper.category_families import category_ranges
from sweeper.explicit import cleared_keys
from sweeper.search_space import ALPHA_OF, Param, SearchSpace, iter_specs, ordered, parse_param
from sweeper.search_values import value_problems
from trainer.errors import ConfigError
from trainer.settings.defaults import yaml_default
from trainer.settings.read import is_int

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
DIRECTIONS = ("minimize", "maximize")
SEARCH_KEYS = (
    "sampler",
    "pruner",
    "directions",
    "metrics",
    "n_trials",
    "n_jobs",
    "storage",
    "study_name",
    "max_failure_rate",
    "heartbeat",
    "devices",
    "device_lock_dir",
    "first_trial",
    "category_ranges",
    "category_families",
    "params",
)
FIRST_TRIALS = ("sampled", "recipe")
RANGE_FIELDS = ("key", "type", "log", "step", "skip_if_adaptive")
# A grid larger than this is a typo (a step of 1 over a huge range), not a plan: 10,000 trials
# of even a one-minute training run take a week of GPU time.
MAX_GRID_TRIALS = 10_000
_ABSENT = object()
# A search group given without the key (a partial mapping): conf/search/default.yaml's value.
_DEFAULT_FAILURE_RATE = yaml_default("search", "max_failure_rate")


@dataclass(frozen=True)
class SearchSettings:
    """The checked study settings of ``cfg.search`` (everything but the parameters)."""

    sampler: str
    sampler_seed: int | None
    sampler_args: dict
    pruner: str
    pruner_args: dict
    directions: tuple[str, ...]
    metrics: tuple[str, ...]
    n_trials: int
    n_jobs: int | None
    storage: str | None
    study_name: str | None
    max_failure_rate: float
    heartbeat_interval: int | None
    grace_period: int | None
    max_retry: int | None
    # One trial per device (sweeper.devices): the ids, as CUDA_VISIBLE_DEVICES takes them.
    devices: tuple[str, ...] = ()
    device_lock_dir: str | None = None
    # recipe: a new study's first trial is the config's own values of the searched keys.
    first_trial: str = "sampled"

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _int_at_least(v: Any, minimum: int) -> bool:
    return is_int(v) and v >= minimum


def _choice(node: Any, key: str, allowed: Sequence[str], problems: list[str]) -> dict:
    """Check ``search.<key>``: a ``name`` and one block of keyword arguments per option (only
    the chosen one is used, so switching ``name`` never carries another's arguments)."""
    node = node if isinstance(node, Mapping) else {}
    name = node.get("name")
    if name not in allowed:
        problems.append(
            f"search.{key}.name: unknown {key} {name!r}; allowed: {', '.join(allowed)}"
        )
    extra = {"seed"} if key == "sampler" else set()
    unknown = sorted(set(node) - {"name", *extra, *allowed})
    if unknown:
        problems.append(
            f"search.{key}: unknown key(s) {', '.join(unknown)}; allowed: name, "
            f"{', '.join(sorted(extra))}{', ' if extra else ''}one block per {key}"
        )
    args = node.get(name) if name in allowed else None
    if args is not None and not isinstance(args, Mapping):
        problems.append(f"search.{key}.{name}: a mapping of keyword arguments is required")
        return {}
    return dict(args or {})


def read_settings(search: Any) -> SearchSettings:
    """Check ``cfg.search``'s study settings; raises ConfigError listing every problem."""
    s = _container(search) or {}
    problems: list[str] = []
    unknown = sorted(set(s) - set(SEARCH_KEYS))
    if unknown:
        problems.append(f"search: unknown key(s) {', '.join(unknown)}; allowed: {SEARCH_KEYS}")
    sampler, pruner = (_mapping(s.get(k)) for k in ("sampler", "pruner"))
    sampler_args = _choice(sampler, "sampler", SAMPLERS, problems)
    pruner_args = _choice(pruner, "pruner", PRUNERS, problems)
    seed = sampler.get("seed")
    if seed is not None and not _int_at_least(seed, 0):
        problems.append(f"search.sampler.seed: a non-negative int or null, got {seed!r}")
    _check_objectives(s.get("directions"), s.get("metrics"), pruner.get("name"), problems)
    _check_budget(s, problems)
    heartbeat = _mapping(s.get("heartbeat"))
    _check_heartbeat(heartbeat, problems)
    devices = _check_devices(s.get("devices"), problems)
    first_trial = s.get("first_trial", "sampled")
    if first_trial not in FIRST_TRIALS:
        problems.append(
            f"search.first_trial: {first_trial!r} is not allowed; allowed: "
            f"{', '.join(FIRST_TRIALS)}"
        )
    lock_dir = s.get("device_lock_dir")
    if lock_dir is not None and (not isinstance(lock_dir, str) or not lock_dir):
        problems.append(f"search.device_lock_dir: a folder path or null, got {lock_dir!r}")
    if problems:
        raise ConfigError(problems)
    interval = heartbeat.get("interval")
    return SearchSettings(
        sampler=sampler["name"],
        sampler_seed=seed,
        sampler_args=sampler_args,
        pruner=pruner["name"],
        pruner_args=pruner_args,
        directions=tuple(s["directions"]),
        metrics=tuple(s["metrics"]),
        n_trials=s["n_trials"],
        n_jobs=s.get("n_jobs"),
        storage=s.get("storage"),
        study_name=s.get("study_name"),
        max_failure_rate=float(s.get("max_failure_rate", _DEFAULT_FAILURE_RATE)),
        heartbeat_interval=interval,
        grace_period=heartbeat.get("grace_period") or (2 * interval if interval else None),
        max_retry=heartbeat.get("max_retry"),
        devices=devices,
        device_lock_dir=lock_dir,
        first_trial=first_trial,
    )


def _mapping(node: Any) -> dict:
    return dict(node) if isinstance(node, Mapping) else {}


def _check_objectives(directions: Any, metrics: Any, pruner: Any, problems: list[str]) -> None:
    if (
        not isinstance(directions, list)
        or not directions
        or any(d not in DIRECTIONS for d in directions)
    ):
        problems.append(f"search.directions: a non-empty list of {DIRECTIONS}, got {directions!r}")
    if (
        not isinstance(metrics, list)
        or not metrics
        or any(not isinstance(m, str) or not m for m in metrics)
    ):
        problems.append(f"search.metrics: a non-empty list of metric names, got {metrics!r}")
    elif isinstance(directions, list) and len(metrics) != len(directions):
        problems.append(
            f"search.metrics: {len(metrics)} metric(s) for {len(directions)} direction(s); "
            "give one direction per metric"
        )
    elif len(metrics) > 1 and pruner != "none":
        problems.append(
            "search.pruner.name: Optuna prunes single-objective studies only; set "
            "search.pruner.name=none for a multi-objective (Pareto) search"
        )


def _check_heartbeat(heartbeat: Mapping, problems: list[str]) -> None:
    for key in ("interval", "grace_period"):
        value = heartbeat.get(key)
        if value is not None and not _int_at_least(value, 1):
            problems.append(
                f"search.heartbeat.{key}: a positive int (seconds) or null, got {value!r}"
            )
    retry = heartbeat.get("max_retry")
    if retry is not None and not _int_at_least(retry, 0):
        problems.append(f"search.heartbeat.max_retry: a non-negative int or null, got {retry!r}")


def _check_devices(devices: Any, problems: list[str]) -> tuple[str, ...]:
    """``search.devices``: null, or distinct device ids as CUDA_VISIBLE_DEVICES takes them
    (indices 0, 1, ... or UUIDs such as GPU-8e3f... / MIG-...)."""
    if devices is None:
        return ()
    ok = (
        isinstance(devices, list)
        and devices
        and all(
            (is_int(d) and d >= 0) or (isinstance(d, str) and d and "," not in d) for d in devices
        )
    )
    if not ok or len({str(d) for d in devices}) != len(devices):
        problems.append(
            f"search.devices: null or a non-empty list of distinct device ids (GPU indices "
            f"0, 1, ... or GPU UUIDs, as CUDA_VISIBLE_DEVICES takes them), got {devices!r}"
        )
        return ()
    return tuple(str(d) for d in devices)


def _check_budget(s: Mapping, problems: list[str]) -> None:
    if not _int_at_least(s.get("n_trials"), 1):
        problems.append(f"search.n_trials: a positive int is required, got {s.get('n_trials')!r}")
    if s.get("n_jobs") is not None and not _int_at_least(s.get("n_jobs"), 1):
        problems.append(f"search.n_jobs: a positive int or null, got {s.get('n_jobs')!r}")
    rate = s.get("max_failure_rate", _DEFAULT_FAILURE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        problems.append(f"search.max_failure_rate: a number in [0, 1] is required, got {rate!r}")
    for key in ("storage", "study_name"):
        if s.get(key) is not None and (not isinstance(s.get(key), str) or not s.get(key)):
            problems.append(f"search.{key}: a non-empty string or null, got {s.get(key)!r}")


def build_search_space(
    search: Any,
    cfg: DictConfig,
    overrides: Sequence[Override],
    group_options: Callable[[str], list[str] | None],
) -> SearchSpace:
    """The checked search space of a sweep; raises ConfigError listing every problem.

    ``cfg`` is the composed config with the command line's fixed overrides applied;
    ``group_options(name)`` lists a config group's options (None when ``name`` is no group).
    """
    s = _container(search) or {}
    problems: list[str] = []
    params: dict[str, Param] = {}
    for key, spec in iter_specs(s.get("params") or {}):
        param = parse_param(key, spec, f"search.params.{key}", problems) if key else None
        if param:
            params[key] = param
    params.update(_category_params(cfg, s, problems))
    fixed, swept = set(), set()
    for override in overrides:
        if override.is_hydra_override():
            continue
        if override.is_sweep_override():
            swept.add(override.key_or_group)
            param = _cli_param(override, problems)
            if param:
                params[param.key] = param
        else:
            fixed.add(override.key_or_group)
    # A key the command line fixes also leaves the preset's keys it overrules (sweeper.explicit):
    # `+category=F train.max_train_epochs=1` searches no step count.
    fixed |= set(cleared_keys(fixed | swept)) - swept
    kept = [
        replace(p, is_group=group_options(p.key) is not None)
        for key, p in params.items()
        if key not in fixed
    ]
    for param in kept:
        _check_key(param, cfg, group_options, problems)
        if not param.is_group and _fixed(cfg, param.key)[0] is not _ABSENT:
            problems += value_problems(param, cfg)
    _check_alpha(kept, cfg, problems)
    _check_fractions(kept, cfg, problems)
    if (s.get("sampler") or {}).get("name") == "grid":
        problems += _grid_problems(kept)
    if problems:
        raise ConfigError(problems)
    return ordered(kept)


def _grid_problems(params: list[Param]) -> list[str]:
    """A grid must be finite and small enough to list: Optuna's GridSampler materialises every
    combination up front, and each one is a whole training run."""
    problems, total = [], 1
    for param in params:
        size = param.grid_size()
        if size is None:
            problems.append(
                f"{param.where}: the grid sampler needs a finite set of values: give "
                "`choices`, or a `step` for a float range"
            )
        elif size > MAX_GRID_TRIALS:
            problems.append(
                f"{param.where}: {size:,} grid values; at most {MAX_GRID_TRIALS:,} are allowed "
                "(each is at least one training run): raise `step` or narrow the range"
            )
        else:
            total *= size
    if not problems and total > MAX_GRID_TRIALS:
        sizes = ", ".join(f"{p.key}: {p.grid_size():,}" for p in params)
        problems.append(
            f"search.params: the grid has {total:,} combinations ({sizes}); at most "
            f"{MAX_GRID_TRIALS:,} are allowed (each is a training run): use fewer values"
        )
    return problems


def _category_params(cfg: DictConfig, search: Mapping, problems: list[str]) -> dict:
    mapping = search.get("category_ranges") or {}
    params: dict[str, Param] = {}
    for name, (bounds, where) in category_ranges(cfg, search, problems).items():
        how = mapping.get(name)
        if not isinstance(how, Mapping) or not how.get("key"):
            problems.append(
                f"{where}: search.category_ranges has no `{name}` entry with a `key` "
                f"(known: {', '.join(sorted(mapping)) or 'none'})"
            )
            continue
        unknown = sorted(set(how) - set(RANGE_FIELDS))
        if unknown:
            problems.append(f"search.category_ranges.{name}: unknown field(s) {unknown}")
        if not isinstance(bounds, list) or len(bounds) != 2:
            problems.append(f"{where}: a [low, high] pair is required, got {bounds!r}")
            continue
        spec = {k: v for k, v in how.items() if k != "key"}
        spec.update(low=bounds[0], high=bounds[1])
        param = parse_param(how["key"], spec, where, problems)
        if param:
            params[param.key] = param
    return params


def _cli_param(override: Override, problems: list[str]) -> Param | None:
    """``key=a,b`` / ``choice(..)`` / ``range(..)`` -> categorical; ``interval(a,b)`` -> float
    (``tag(log, interval(a,b))`` for a log scale)."""
    key, where = override.key_or_group, f"command line `{override.input_line}`"
    if override.is_discrete_sweep():
        return Param(
            key=key, type="categorical", where=where, choices=tuple(override.sweep_iterator())
        )
    sweep = override.value()
    spec = {"type": "float", "low": sweep.start, "high": sweep.end, "log": "log" in sweep.tags}
    return parse_param(key, spec, where, problems)


def _fixed(cfg: DictConfig, key: str) -> tuple[Any, bool]:
    """(value of a non-searched key, whether it is an interpolation that follows another)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return _ABSENT, False
    return OmegaConf.select(cfg, key), OmegaConf.is_interpolation(parent, leaf)


def _check_key(param: Param, cfg: DictConfig, group_options, problems: list[str]) -> None:
    options = group_options(param.key)
    if options is not None:
        if param.type != "categorical" or param.choices is None:
            problems.append(f"{param.where}: config group `{param.key}` takes type categorical")
            return
        bad = [c for c in param.choices if c not in options]
        if bad:
            problems.append(
                f"{param.where}: {bad} are not options of config group `{param.key}`; "
                f"available: {', '.join(sorted(options))}"
            )
        return
    value, _ = _fixed(cfg, param.key)
    if value is _ABSENT:
        problems.append(
            f"{param.where}: unknown key `{param.key}`: not a key of the composed config nor a "
            "config group"
        )


def _check_fractions(params: list[Param], cfg: DictConfig, problems: list[str]) -> None:
    searched = {p.key: p for p in params}
    for p in params:
        if p.type != "fraction_of" or not p.of:
            continue
        base = searched.get(p.of)
        if base is not None:
            if base.type == "fraction_of" or (base.bounds() or (0, 0))[0] < 1:
                problems.append(f"{p.where}.of: {p.of} is searched but not as a positive int")
            continue
        value, _ = _fixed(cfg, p.of)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{p.where}.of: {p.of} must be a positive int, it is {value!r}")


def _check_alpha(params: list[Param], cfg: DictConfig, problems: list[str]) -> None:
    """No sampled alpha may exceed the smallest rank it can be paired with."""
    searched = {p.key: p for p in params}
    for alpha_key, dim_key in ALPHA_OF.items():
        alpha, dim = searched.get(alpha_key), searched.get(dim_key)
        if alpha is None and dim is None or (alpha is not None and alpha.type == "fraction_of"):
            continue
        if alpha is not None:
            top, where = (alpha.bounds() or (None, None))[1], alpha.where
        else:
            top, follows = _fixed(cfg, alpha_key)
            where = f"{alpha_key} (fixed at {top!r})"
            if follows or not isinstance(top, int | float) or not top:
                continue  # an interpolation (alpha: ${network.dim}) or 0 (= dim) is always valid
        if dim is not None:
            least = (dim.bounds() or (None, None))[0]
        else:
            least, _ = _fixed(cfg, dim_key)
        if isinstance(top, int | float) and isinstance(least, int | float) and top > least:
            problems.append(
                f"{where}: impossible alpha constraint: {alpha_key} can reach {top} but "
                f"{dim_key} can be {least} ({alpha_key} must not exceed {dim_key}); sample it "
                f"as {{type: fraction_of, of: {dim_key}}}"
            )

"""The values a searched key can take, checked with the run's own rules before any trial.

For every searched key that is not a config group (command-line sweeps, ``search.params``,
category ranges), each representative value (every choice; a range's bounds) is set into a copy
of the composed config and ``trainer.validate.config_problems`` (with the sweeper's ``eval`` /
``search`` checks) reports what it says about that key. One set of rules, so a value that the
sweep accepts is one that a trial accepts. Group options are checked as options.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from sweeper.search_space import Param


def _representatives(param: Param) -> list:
    """The values checked before the first trial: every choice; a range's bounds."""
    if param.choices is not None:
        values = list(param.choices)
    elif param.type == "int":
        values = [int(param.low), int(param.high)]
    else:
        values = [param.low, param.high]
    unique: list = []
    for value in values:  # not a set: a choice may be a list (unhashable)
        if not any(value == u and type(value) is type(u) for u in unique):
            unique.append(value)
    return unique


def names_key(problem: str, key: str, children: bool = False) -> bool:
    """Whether ``problem`` (``"<key>: ..."``, ``"<key> = ..."``, ``"<key>[0]: ..."``; with
    ``children`` also ``"<key>.<child>..."``) is about ``key``."""
    follows = (":", " ", "[", "=", ".") if children else (":", " ", "[", "=")
    return problem.startswith(key) and problem[len(key) : len(key) + 1] in follows


def fixed_problems(cfg: DictConfig, searched: list[str], checks) -> list[str]:
    """What a trial's own validation (``trainer.validate``: the keys, then the data) says
    about the keys a sweep does not search: the same for every trial, so reported once, before
    the first. Problems of searched keys (and their children: a searched config group) are left
    to :func:`value_problems`."""
    from trainer.validate import config_problems, data_problems

    problems = config_problems(cfg, checks)
    if not any(p.startswith(("data.", "paths.")) for p in problems):
        problems += data_problems(cfg)
    return [p for p in problems if not any(names_key(p, k, children=True) for k in searched)]


def value_problems(param: Param, cfg: DictConfig) -> list[str]:
    """What the run's own checks (``trainer.validate.config_problems`` with the ``eval`` and
    ``search`` checks) say about ``param.key`` at each representative value, so that a value
    no trial could train with is refused now, not trial after trial. ``fraction_of`` values
    are valid by construction (at least 1, at most the rank)."""
    from sweeper.checks import evaluation_problems
    from trainer.validate import config_problems

    if param.type == "fraction_of":
        return []
    problems = []
    for value in _representatives(param):
        trial_cfg = copy.deepcopy(cfg)
        try:
            OmegaConf.update(trial_cfg, param.key, value, merge=False)
        except Exception as exc:  # noqa: BLE001 - OmegaConf's validation, typed nodes
            problems.append(f"{param.where}: value {value!r}: {param.key}: {exc}")
            continue
        problems += [
            f"{param.where}: value {value!r}: {p}"
            for p in config_problems(trial_cfg, [evaluation_problems])
            if names_key(p, param.key)
        ]
    return problems

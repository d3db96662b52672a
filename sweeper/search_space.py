"""Search parameters: the small YAML syntax of ``search.params``, checked and sampled.

A parameter is a mapping with a ``type`` at the config key it sets (nested YAML, so that
``search.params.network.dim.low=8`` works on the command line)::

    network:
      dim: {type: int, low: 4, high: 64, log: true}          # int range (log, step)
      alpha: {type: fraction_of, of: network.dim, low: 0.01, high: 1.0, log: true}
    optimizer:
      unet_lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true, skip_if_adaptive: true}
    scheduler: {type: categorical, choices: [constant, cosine]}  # a config group's options

``fraction_of`` samples a ratio r in (0, 1] (Optuna records it as ``<key>_ratio``) and sets the
key to ``max(1, round(r * <of>))``, so alpha never exceeds the rank it is sampled with.
``skip_if_adaptive`` leaves the parameter out of trials whose optimizer sets its own step size
(Prodigy, DAdapt*, relative-step Adafactor): their ``lr`` is a multiplier, not a step size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

TYPES = ("float", "int", "categorical", "fraction_of")
FIELDS = ("type", "low", "high", "log", "step", "choices", "of", "skip_if_adaptive")
# Keys whose value must not exceed another's (kohya's alpha <= dim rule).
ALPHA_OF = {"network.alpha": "network.dim", "network.conv_alpha": "network.conv_dim"}
_SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Param:
    """One searched key. ``where`` names its origin in messages (a YAML path or the CLI)."""

    key: str
    type: str
    where: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    of: str | None = None
    skip_if_adaptive: bool = False
    is_group: bool = False

    @property
    def optuna_name(self) -> str:
        return f"{self.key}_ratio" if self.type == "fraction_of" else self.key

    def distribution(self) -> BaseDistribution:
        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self._step(1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def _step(self, default):
        return default if self.step is None else int(self.step)

    def grid_size(self) -> int | None:
        """How many values a grid sampler walks (counted, not listed), or None when open."""
        if self.choices is not None:
            return len(self.choices)
        if self.type == "int":
            return max(0, (int(self.high) - int(self.low)) // self._step(1) + 1)
        if self.step is not None:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return None

    def grid_values(self) -> list | None:
        """The finite list of values a grid sampler walks, or None when the range is open.
        Call it after :meth:`grid_size` was checked: a range can hold billions of values."""
        if self.choices is not None:
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, self._step(1)))
        if self.step is not None:
            return [self.low + i * self.step for i in range(self.grid_size())]
        return None

    def bounds(self) -> tuple[float, float] | None:
        """(smallest, largest) value the parameter can take, when numeric."""
        if self.choices is not None:
            numbers = [c for c in self.choices if isinstance(c, int | float)]
            return (min(numbers), max(numbers)) if len(numbers) == len(self.choices) else None
        return (self.low, self.high)

    def suggest(self, trial: Trial) -> Any:
        dist = self.distribution()
        if isinstance(dist, CategoricalDistribution):
            return trial.suggest_categorical(self.optuna_name, list(self.choices))
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(
                self.optuna_name, dist.low, dist.high, step=dist.step, log=dist.log
            )
        return trial.suggest_float(
            self.optuna_name, dist.low, dist.high, step=dist.step, log=dist.log
        )


def iter_specs(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, spec) pairs of a nested ``params`` mapping; a spec is a mapping with
    ``type`` (or anything that is not a mapping, which the parser then rejects). A null drops
    the key (e.g. a parameter inherited from search/default)."""
    if node is None:
        return []
    if not isinstance(node, Mapping) or "type" in node:
        return [(prefix, node)]
    pairs: list[tuple[str, Any]] = []
    for name, child in node.items():
        pairs += iter_specs(child, f"{prefix}.{name}" if prefix else str(name))
    return pairs


def parse_param(key: str, spec: Any, where: str, problems: list[str]) -> Param | None:
    """Check one spec; appends every problem (naming ``where``) and returns None if any."""
    before = len(problems)
    if not isinstance(spec, Mapping):
        problems.append(
            f"{where}: a search parameter is a mapping with `type` ({', '.join(TYPES)}), "
            f"got {spec!r}"
        )
        return None
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        problems.append(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}"
        )
    kind = spec.get("type")
    if kind not in TYPES:
        problems.append(
            f"{where}.type: unknown distribution {kind!r}; allowed: {', '.join(TYPES)}"
        )
        return None
    fields = {k: spec.get(k) for k in FIELDS if k != "type"}
    fields["log"] = bool(fields["log"])
    fields["skip_if_adaptive"] = bool(fields["skip_if_adaptive"])
    if fields["choices"] is not None:
        fields["choices"] = tuple(fields["choices"])
    check = {
        "float": _check_range,
        "int": _check_range,
        "categorical": _check_choices,
        "fraction_of": _check_fraction,
    }
    check[kind](key, kind, fields, where, problems)
    if len(problems) > before:
        return None
    return Param(key=key, type=kind, where=where, **fields)


def _check_range(key, kind, f, where, problems) -> None:
    if f["choices"] is not None or f["of"] is not None:
        problems.append(f"{where}: `choices`/`of` do not apply to type {kind}")
    low, high, step = f["low"], f["high"], f["step"]
    number = int if kind == "int" else int | float
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool):
            problems.append(f"{where}.{name}: a {kind} is required, got {value!r}")
            return
    if low > high:
        problems.append(f"{where}: low {low} > high {high}")
    if f["log"] and low <= 0:
        problems.append(f"{where}.low: a log range needs low > 0, got {low}")
    if step is not None:
        if not isinstance(step, number) or isinstance(step, bool) or step <= 0:
            problems.append(f"{where}.step: a positive {kind} is required, got {step!r}")
        elif f["log"]:
            problems.append(f"{where}: `step` and `log: true` cannot be combined (Optuna)")


def _check_choices(key, kind, f, where, problems) -> None:
    extra = [n for n in ("low", "high", "step", "of") if f[n] is not None]
    if extra or f["log"]:
        problems.append(f"{where}: a categorical takes only `choices`, not {extra or ['log']}")
    choices = f["choices"]
    if not choices:
        problems.append(f"{where}.choices: a non-empty list is required, got {choices!r}")
    elif not all(isinstance(c, _SCALARS) for c in choices):
        problems.append(f"{where}.choices: only null, bool, int, float or str values are allowed")


def _check_fraction(key, kind, f, where, problems) -> None:
    if not isinstance(f["of"], str) or not f["of"]:
        problems.append(f"{where}.of: the key this one is a fraction of is required")
    if key in ALPHA_OF and f["of"] != ALPHA_OF[key]:
        problems.append(f"{where}.of: {key} is a fraction of {ALPHA_OF[key]}, not {f['of']!r}")
    if f["choices"] is not None:
        values = list(f["choices"])
    else:
        _check_range(key, "float", {**f, "of": None}, where, problems)
        values = [v for v in (f["low"], f["high"]) if isinstance(v, int | float)]
    bad = [v for v in values if not isinstance(v, int | float) or not 0 < v <= 1]
    if bad or not values:
        problems.append(
            f"{where}: impossible constraint: a fraction_of ratio must lie in (0, 1] so that "
            f"{key} never exceeds {f['of']}; got {bad or values}"
        )


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")


def format_value(value: Any) -> str:
    """A sampled value as the value part of a Hydra override (strings quoted when needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("null", "true", "false", "inf", "nan"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class SearchSpace:
    """Checked parameters in sampling order (groups, then plain keys, then fractions)."""

    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def grid(self) -> dict[str, list]:
        return {p.optuna_name: p.grid_values() for p in self.params}

    def suggest(
        self,
        trial: Trial,
        fixed_value: Callable[[str], Any],
        is_adaptive: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any]:
        """Sample one trial: {config key or group: value}. ``fixed_value(key)`` reads keys that
        are not searched; ``is_adaptive(values)`` tells whether the trial's optimizer (the
        group choice in ``values`` if searched) sets its own step size."""
        values: dict[str, Any] = {}
        for param in self.params:
            if param.skip_if_adaptive and is_adaptive(values):
                continue
            sampled = param.suggest(trial)
            if param.type == "fraction_of":
                total = values[param.of] if param.of in values else fixed_value(param.of)
                sampled = max(1, round(sampled * int(total)))
            values[param.key] = sampled
        return values

    def recipe(
        self, value_of: Callable[[str], Any], is_adaptive: Callable[[dict[str, Any]], bool]
    ) -> tuple[dict[str, Any], list[str]]:
        """The config's own values of the searched keys as Optuna parameters (what
        ``study.enqueue_trial`` takes), or ``{}`` and why not: a value that is unset, or
        outside its range. ``value_of(key)`` reads the config (a group's chosen option)."""
        params: dict[str, Any] = {}
        values: dict[str, Any] = {}
        reasons: list[str] = []
        for param in self.params:
            if param.skip_if_adaptive and is_adaptive(values):
                continue
            value = value_of(param.key)
            if param.type == "fraction_of" and value is not None:
                total = values[param.of] if param.of in values else value_of(param.of)
                value = value / total if value and total else None
            if value is None:
                reasons.append(f"{param.key} is not set in the config")
                continue
            if param.choices is not None:
                inside = value in param.choices
            else:
                inside = isinstance(value, int | float) and param.low <= value <= param.high
            if not inside:
                reasons.append(f"{param.key}={format_value(value)} is outside {param.where}")
                continue
            params[param.optuna_name] = value
            values[param.key] = value
        return ({} if reasons else params), reasons

    @staticmethod
    def to_overrides(values: Mapping[str, Any]) -> list[str]:
        return [f"{key}={format_value(value)}" for key, value in values.items()]


def ordered(params: list[Param]) -> SearchSpace:
    """Groups first (other choices depend on them), fractions last (they read their base)."""
    rank = {True: 0, False: 1}
    return SearchSpace(
        tuple(
            sorted(
                params,
                key=lambda p: (rank[p.is_group], p.type == "fraction_of", p.key),
            )
        )
    )

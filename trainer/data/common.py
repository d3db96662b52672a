"""Small helpers shared by the data modules: reading config keys and deriving seeds."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from trainer.errors import ConfigError

_MISSING = object()


def read_config(cfg: Any, keys: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The values of ``keys`` in ``cfg`` and a problem for each key that is missing.

    Works for a DictConfig as well as for any object with attributes (a dataclass, a
    SimpleNamespace), so that the data modules can be used without Hydra. Missing keys are
    left out of the returned dict, so that :func:`require` does not report them twice.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key in keys:
        try:
            value = getattr(cfg, key, _MISSING)
        except Exception as err:  # omegaconf raises its own errors for unresolvable values
            problems.append(f"data.{key}: cannot be read ({err})")
            continue
        if value is _MISSING:
            problems.append(f"data.{key}: the key is missing from the data config")
        else:
            values[key] = value
    return values, problems


def require(
    values: dict[str, Any], key: str, ok: Callable[[Any], bool], allowed: str, problems: list
) -> None:
    """Note ``data.<key>: <value> <allowed>`` when the key was read and ``ok`` rejects it."""
    if key in values and not ok(values[key]):
        problems.append(f"data.{key}: {values[key]!r} {allowed}")


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_pair(value: Any) -> bool:
    """A two-element non-string sequence (a list, a tuple or an omegaconf ListConfig)."""
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python versions.

    Python's ``hash`` is salted per process, so it cannot be used: two runs with the same
    seed must draw the same captions, flips and crops.
    """
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def rng_for(*parts: object) -> random.Random:
    """A private generator for one purpose (e.g. ``"caption", seed, epoch, index``)."""
    return random.Random(derive_seed(*parts))

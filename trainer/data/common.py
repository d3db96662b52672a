"""Small helpers shared by the data modules: checking config keys and deriving seeds."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from trainer.errors import ConfigError
from trainer.settings.read import is_int, is_number, read_keys  # noqa: F401 (re-exported)


def require(
    values: dict[str, Any], key: str, ok: Callable[[Any], bool], allowed: str, problems: list
) -> None:
    """Note ``data.<key>: <value> <allowed>`` when the key was read and ``ok`` rejects it."""
    if key in values and not ok(values[key]):
        problems.append(f"data.{key}: {values[key]!r} {allowed}")


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


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

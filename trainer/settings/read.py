"""The one reader of the config tree: a key of a group node, and the number tests every check
uses.

A group node is a DictConfig when Hydra composed the run, or a mapping / an object with
attributes when a module is used without Hydra (tests, ``python -m evaluators``). A mandatory
value left unset (``???`` in the YAML) reads as the string ``"???"``, so that the checks report
it as a value instead of crashing on omegaconf's exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "<missing>"})()
MISSING_VALUE = "???"


def value(node: Any, key: str, default: Any = ABSENT) -> Any:
    """``node[key]``, ``default`` when the key is absent, ``"???"`` when it is unset."""
    # ``key in node`` is False for a ??? value, so keys() it is.
    known = isinstance(node, DictConfig) and key in node.keys()  # noqa: SIM118
    if known and OmegaConf.is_missing(node, key):
        return MISSING_VALUE
    try:
        if isinstance(node, Mapping | DictConfig):
            return plain(node.get(key, default))
        return plain(getattr(node, key, default))
    except MissingMandatoryValue:
        return MISSING_VALUE


def plain(node: Any) -> Any:
    """``node`` as plain Python containers (interpolations resolved); other values as they are."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def as_dict(node: Any) -> dict[str, Any]:
    """A group node as a plain dict ({} for None)."""
    if node is None:
        return {}
    node = plain(node)
    if isinstance(node, Mapping):
        return {str(k): plain(v) for k, v in node.items()}
    return {k: v for k, v in vars(node).items() if not k.startswith("_")}


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML's ``true`` is not a count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_keys(node: Any, keys: tuple[str, ...], group: str) -> tuple[dict[str, Any], list[str]]:
    """The values of ``keys`` in ``node`` and a problem for each key that is missing or cannot
    be read. Missing keys are left out of the returned dict, so that a later check of the
    value does not report them twice."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key in keys:
        try:
            got = value(node, key)
        except Exception as err:  # noqa: BLE001 - omegaconf's errors for unresolvable values
            problems.append(f"{group}.{key}: cannot be read ({err})")
            continue
        if got is ABSENT:
            problems.append(f"{group}.{key}: the key is missing from the {group} config")
        else:
            values[key] = got
    return values, problems

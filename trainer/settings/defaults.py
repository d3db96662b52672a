"""Defaults live in the YAML option files under ``conf/`` (each key documented there), and
only there: a reader used without Hydra (a partial mapping in a test, ``python -m evaluators``)
fills what it is not given from the group's default option file instead of restating values
in code."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@functools.cache
def _load(group: str, option: str) -> dict[str, Any]:
    node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    # Interpolations (``${model.resolution}``) need the whole config: they are left as written.
    return OmegaConf.to_container(node, resolve=False)


def yaml_defaults(group: str, option: str = "default") -> dict[str, Any]:
    """The keys of ``conf/<group>/<option>.yaml`` (a fresh copy), without its defaults list."""
    import copy

    values = copy.deepcopy(_load(group, option))
    values.pop("defaults", None)
    return values


def yaml_default(group: str, key: str, option: str = "default") -> Any:
    """One key of ``conf/<group>/<option>.yaml``."""
    return yaml_defaults(group, option)[key]

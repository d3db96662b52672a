"""The guide's categories on other model families: ``search.category_families``.

The category presets (``conf/category/A.yaml`` ... ``I.yaml``) carry the guide's SD 1.x
numbers. ``search.category_families.<family>`` replaces some of a category's search ranges when
``model.family`` is that family, in one table for all nine categories: each entry, named as in
``category.search`` (``dim``, ``unet_lr``, ...), is a ``[low, high]`` pair for every category or
a mapping ``{category name: [low, high]}``. A family or range the table does not name keeps the
category's own range.

``category_ranges`` gives the selected category's ranges for the config's family (with where
each comes from); ``family_defaults`` sets a run's ``network.dim`` to the low end of the
family's rank range, as the presets do with the guide's range (the command line still wins).
Every problem names its key.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeper.config_keys import CONF_DIR
from trainer.errors import ConfigError
from trainer.families import DEFAULT_FAMILY, FAMILY_NAMES

log = logging.getLogger(__name__)

# Ranges whose low end is also the preset's default value, at this key: the category presets
# set network.dim to the low end of their rank range ([project] in conf/category/*.yaml).
DEFAULT_AT_LOW = {"dim": "network.dim"}


@functools.cache
def category_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (CONF_DIR / "category").glob("*.yaml")))


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def table_problems(table: Any, range_names: Iterable[str]) -> list[str]:
    """Problems of a ``search.category_families`` table, each naming its key."""
    table = _container(table)
    if table is None:
        return []
    if not isinstance(table, Mapping):
        return [f"search.category_families: a mapping of model families, got {table!r}"]
    known_ranges, problems = sorted(range_names), []
    for family, block in table.items():
        where = f"search.category_families.{family}"
        if family not in FAMILY_NAMES:
            problems.append(
                f"{where}: not a model family; known: {', '.join(sorted(FAMILY_NAMES))}"
            )
            continue
        if block is None:
            continue
        if not isinstance(block, Mapping):
            problems.append(f"{where}: a mapping of category ranges is required, got {block!r}")
            continue
        for name, value in block.items():
            if name not in known_ranges:
                problems.append(
                    f"{where}.{name}: search.category_ranges has no `{name}` entry "
                    f"(known: {', '.join(known_ranges) or 'none'})"
                )
            elif isinstance(value, Mapping):
                for category, bounds in value.items():
                    if category not in category_names():
                        problems.append(
                            f"{where}.{name}.{category}: not a category; known: "
                            f"{', '.join(category_names())}"
                        )
                    elif not _is_pair(bounds):
                        problems.append(
                            f"{where}.{name}.{category}: a [low, high] pair is required, "
                            f"got {bounds!r}"
                        )
            elif not _is_pair(value):
                problems.append(
                    f"{where}.{name}: a [low, high] pair or a mapping of categories to pairs "
                    f"is required, got {value!r}"
                )
    return problems


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def category_ranges(
    cfg: DictConfig, search: Mapping, problems: list[str]
) -> dict[str, tuple[Any, str]]:
    """{range name: ([low, high] or what was given, where it comes from)} of the selected
    category (empty without one), the family's table replacing the category's own ranges."""
    ranges = _container(OmegaConf.select(cfg, "category.search", default=None)) or {}
    category = OmegaConf.select(cfg, "category.name", default=None)
    out = {name: (bounds, f"category.search.{name} (category {category})")
           for name, bounds in ranges.items()}  # fmt: skip
    table = search.get("category_families")
    found = table_problems(table, (search.get("category_ranges") or {}).keys())
    problems += found
    if found or not out:
        return out
    family = OmegaConf.select(cfg, "model.family", default=None) or DEFAULT_FAMILY
    for name, value in ((_container(table) or {}).get(family) or {}).items():
        where = f"search.category_families.{family}.{name}"
        if isinstance(value, Mapping):
            if category not in value:
                problems.append(f"{where}: no range for category {category}")
                continue
            value, where = value[category], f"{where}.{category}"
        out[name] = (value, f"{where} (category {category}, model.family {family})")
    return out


def family_defaults(cfg: DictConfig, given: set[str]) -> DictConfig:
    """``cfg`` with each ``DEFAULT_AT_LOW`` key that the command line (``given``) does not set
    moved to the low end of the family's range for the category (a copy; raises ConfigError
    on a bad table)."""
    problems: list[str] = []
    search = _container(cfg.get("search")) or {}
    ranges = category_ranges(cfg, search, problems)
    if problems:
        raise ConfigError(problems)
    out = cfg
    for name, key in DEFAULT_AT_LOW.items():
        bounds, where = ranges.get(name, (None, ""))
        if key in given or not where.startswith("search.category_families") or not bounds:
            continue
        if OmegaConf.select(cfg, key, default=None) == bounds[0]:
            continue
        if out is cfg:
            out = copy.deepcopy(cfg)
        OmegaConf.update(out, key, bounds[0], merge=False)
        log.info("%s=%s: the low end of %s", key, bounds[0], where)
    return out

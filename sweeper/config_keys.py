"""Keys that do nothing are refused: every key of a config group must be declared by one of
that group's option files (``conf/<group>/*.yaml``), so that ``+network.dimm=4`` is a
"did you mean network.dim?" before training, not a run that silently ignores it.

The option files are the documentation of every key (README: "every key is documented in its
YAML file"), so their union is what a group may hold. Free-form mappings (``optimizer.args``:
the optimizer class's own keyword arguments, checked by constructing it; ``category.search``:
checked against ``search.category_ranges``) and the top-level ``callbacks`` mapping may hold
any key. ``search`` is checked by its own reader (``sweeper.search_config.read_settings``).
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FREE_FORM = ("optimizer.args", "category.search", "callbacks")
# Groups whose keys another reader checks in full, and Hydra's own node.
OWN_READER = ("search", "hydra")
# Top-level nodes added at run time: the sweeper's trial identity.
RUNTIME_KEYS = ("optuna", "hydra")
# Keys the code reads that no option file declares: set by the sweeper for each trial
# (sweeper/tracking/sweep.py ``job_overrides``).
OPTIONAL_KEYS = ("tracking.parent_run_id",)
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)


def _paths(node: DictConfig, prefix: str) -> set[str]:
    out = set()
    for key in node:
        path = f"{prefix}.{key}"
        out.add(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and path not in FREE_FORM:
            out |= _paths(child, path)
    return out


@functools.cache
def declared_keys(conf_dir: Path = CONF_DIR) -> dict[str, frozenset[str]]:
    """{group: every dotted key (``network.dim``) that one of its option files declares}."""
    declared: dict[str, frozenset[str]] = {}
    for folder in sorted(p for p in conf_dir.iterdir() if p.is_dir()):
        group, keys = folder.name, set()
        for option in sorted(folder.glob("*.yaml")):
            found = _PACKAGE.search(option.read_text(encoding="utf-8"))
            package = found.group(1) if found else group
            loaded = OmegaConf.load(option)
            if package == "_global_":
                loaded = loaded.get(group)
            elif package != group:
                continue
            if isinstance(loaded, DictConfig):
                keys |= _paths(loaded, group) - {f"{group}.defaults"}
        keys |= {k for k in OPTIONAL_KEYS if k.startswith(f"{group}.")}
        declared[group] = frozenset(keys)
    top = OmegaConf.load(conf_dir / "config.yaml")
    declared[""] = frozenset({*top.keys(), *declared, *RUNTIME_KEYS} - {"defaults"})
    return declared


def _unknown(path: str, value, allowed: set[str], where: str) -> str:
    parent, _, name = path.rpartition(".")
    siblings = sorted({k.rpartition(".")[2] for k in allowed if k.rpartition(".")[0] == parent})
    guess = difflib.get_close_matches(name, siblings, n=1)
    hint = f"did you mean {f'{parent}.' if parent else ''}{guess[0]}? " if guess else ""
    return (
        f"{path}: unknown key (value {value!r}): {where} declares it, so it would do nothing; "
        f"{hint}allowed: {', '.join(siblings)}"
    )


def unknown_key_problems(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every key of ``cfg`` that no option file of its group declares, with a suggestion."""
    declared = declared_keys(conf_dir)
    problems = [
        _unknown(
            key, _value(cfg, key), declared[""], "neither conf/config.yaml nor a group folder"
        )
        for key in cfg
        if key not in declared[""]
    ]
    for group, keys in declared.items():
        node = cfg._get_node(group) if group and group in cfg else None
        if group in OWN_READER or not isinstance(node, DictConfig):
            continue
        for path in sorted(_paths(node, group) - keys):
            parent = path.rpartition(".")[0]
            if parent in keys or parent == group:  # report the outermost unknown key only
                problems.append(
                    _unknown(path, _value(cfg, path), keys, f"no option file conf/{group}/*.yaml")
                )
    return problems


def _value(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: show it as written
        return "?"
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value

"""A value given on the command line wins over one a preset set.

Presets (``+category=X``, ``+experiment=...``, ``train=dreambooth``) set
``train.max_train_steps``, and steps win over ``train.max_train_epochs`` (kohya's rule), so
``+category=F train.max_train_epochs=1`` used to train F's 2000 steps without a word. The
command line is the user's latest word: a ``train.max_train_epochs`` given there clears a
preset's ``train.max_train_steps`` (logged). When both are given there, both are the user's
and steps win as documented. Refusing instead would make the obvious command need a third
override (``train.max_train_steps=null``) to mean what it says.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# key given on the command line -> the preset key it clears (set to null)
CLEARS = {"train.max_train_epochs": "train.max_train_steps"}


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys (or groups) that command-line overrides set, ``+``/``++`` dropped."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group for o in parsed if not o.is_hydra_override()}


def cleared_keys(given: set[str]) -> dict[str, str]:
    """{preset key to clear: the given key that clears it}."""
    return {
        cleared: key for key, cleared in CLEARS.items() if key in given and cleared not in given
    }


def explicit_wins(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """``cfg`` with the preset values that a command-line value overrules set to null (a
    copy; ``cfg`` itself is left as composed)."""
    out = cfg
    for cleared, key in cleared_keys(override_keys(overrides)).items():
        preset = OmegaConf.select(cfg, cleared, default=None)
        if preset is None:
            continue
        if out is cfg:
            out = copy.deepcopy(cfg)
        OmegaConf.update(out, cleared, None, merge=False)
        log.info(
            "%s=%s is given on the command line: the preset's %s=%s is cleared (a value you "
            "give wins; give both to train by steps)",
            key, OmegaConf.select(cfg, key), cleared, preset,
        )  # fmt: skip
    return out

"""The ``network`` config of the LyCORIS types (loha, lokr, ia3, dora), validated.

All problems are reported at once (``ConfigError.problems``), each naming the key, the value and
what is allowed, so ``validate_run`` can list them before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

LYCORIS_TYPES = ("loha", "lokr", "ia3", "dora")
# LyCORIS ignores network dropout for these (DoRA: weight decomposition; IA3: not implemented).
_NO_DROPOUT = ("dora", "ia3")
_ABSENT = object()


@dataclass(frozen=True)
class LycorisSpec:
    """A validated LyCORIS network config (alpha 0 already resolved to the rank)."""

    type: str
    dim: int | None
    alpha: float | None
    conv_dim: int | None
    conv_alpha: float | None
    factor: int | None
    dropout: float
    train_unet: bool
    train_text_encoder: bool

    @property
    def preset(self) -> str:
        """The LyCORIS preset this network uses (see ``lycoris_net.PRESETS``)."""
        if self.type == "ia3":
            return "ia3"
        return "full" if self.conv_dim else "full-lin"


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, _ABSENT)
    return getattr(cfg, key, _ABSENT)


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number_at_least(value: Any, low: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= low


def _rank_alpha(problems: list[str], cfg: Any, dim_key: str, alpha_key: str, optional: bool):
    """(rank, alpha) of one pair of keys; alpha 0 means alpha = rank."""
    dim, alpha = _get(cfg, dim_key), _get(cfg, alpha_key)
    if optional and dim in (None, _ABSENT) and alpha in (None, _ABSENT):
        return None, None
    if not _int_at_least(dim, 1):
        problems.append(f"network.{dim_key} = {_show(dim)}; must be an integer >= 1")
        return None, None
    if not _number_at_least(alpha, 0):
        problems.append(
            f"network.{alpha_key} = {_show(alpha)}; must be a number >= 0 (0 = {dim_key})"
        )
        return None, None
    return dim, float(alpha or dim)


def _show(value: Any) -> str:
    return "<missing>" if value is _ABSENT else repr(value)


def _type_specific(problems: list[str], cfg: Any, net_type: str) -> dict[str, Any]:
    if net_type == "ia3":
        # (IA)^3 learns one scaling vector per layer: there is no rank or alpha to set.
        for key in ("dim", "alpha", "conv_dim", "conv_alpha", "factor"):
            if _get(cfg, key) not in (None, _ABSENT):
                problems.append(
                    f"network.{key} = {_get(cfg, key)!r}; must be null for network.type "
                    "'ia3' ((IA)^3 learns scaling vectors, it has no rank)"
                )
        return {"dim": None, "alpha": None, "conv_dim": None, "conv_alpha": None, "factor": None}
    dim, alpha = _rank_alpha(problems, cfg, "dim", "alpha", optional=False)
    conv_dim, conv_alpha = _rank_alpha(problems, cfg, "conv_dim", "conv_alpha", optional=True)
    factor = _get(cfg, "factor")
    if net_type == "lokr":
        if not (factor == -1 or _int_at_least(factor, 1)):
            problems.append(
                f"network.factor = {_show(factor)}; must be -1 (balanced) or an integer >= 1"
            )
    elif factor not in (None, _ABSENT):
        problems.append(
            f"network.factor = {factor!r} is only used by network.type 'lokr' "
            f"(got {net_type!r}); set it null"
        )
        factor = None
    return {
        "dim": dim,
        "alpha": alpha,
        "conv_dim": conv_dim,
        "conv_alpha": conv_alpha,
        "factor": factor if net_type == "lokr" else None,
    }


def resolve_lycoris_config(network_cfg: Any) -> LycorisSpec:
    """Validate a LyCORIS ``network`` config (DictConfig, mapping or dataclass)."""
    problems: list[str] = []
    net_type = _get(network_cfg, "type")
    if net_type not in LYCORIS_TYPES:
        raise ConfigError(
            f"network.type = {_show(net_type)}; LyCORIS types: {', '.join(LYCORIS_TYPES)}"
        )
    ranks = _type_specific(problems, network_cfg, net_type)
    dropout = _get(network_cfg, "dropout")
    if not _number_at_least(dropout, 0) or dropout >= 1:
        problems.append(f"network.dropout = {_show(dropout)}; must be a number in [0, 1)")
    elif dropout and net_type in _NO_DROPOUT:
        problems.append(
            f"network.dropout = {dropout!r}; must be 0 for network.type {net_type!r} "
            "(LyCORIS does not apply dropout to it)"
        )
    flags = {}
    for key in ("train_unet", "train_text_encoder"):
        flags[key] = _get(network_cfg, key)
        if not isinstance(flags[key], bool):
            problems.append(f"network.{key} = {_show(flags[key])}; must be true or false")
    if flags["train_unet"] is False and flags["train_text_encoder"] is False:
        problems.append(
            "network.train_unet and network.train_text_encoder are both false; "
            "at least one must be true"
        )
    if problems:
        raise ConfigError(problems)
    return LycorisSpec(type=net_type, dropout=float(dropout), **ranks, **flags)


def lycoris_config_problems(network_cfg: Any) -> list[str]:
    """Every problem of a LyCORIS ``network_cfg`` as messages (empty when valid)."""
    try:
        resolve_lycoris_config(network_cfg)
    except ConfigError as exc:
        return list(exc.problems)
    return []

"""The ``network`` group, validated into a typed spec: :class:`LoraSpec` for kohya's LoRA
(``lora`` = LierLa, ``locon`` = C3Lier, on peft) and :class:`LycorisSpec` for the LyCORIS types
(``loha``, ``lokr``, ``ia3``, ``dora``).

Every problem is reported at once (``ConfigError.problems``), each naming the key, the value and
what is allowed. Nothing here imports torch: a typo is reported before any model library loads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from trainer.errors import ConfigError
from trainer.settings.read import ABSENT, is_int, is_number, value

LORA_TYPES = ("lora", "locon")
LYCORIS_TYPES = ("loha", "lokr", "ia3", "dora")
NETWORK_TYPES = (*LORA_TYPES, *LYCORIS_TYPES)
# LyCORIS ignores network dropout for these (DoRA: weight decomposition; IA3: not implemented).
_NO_DROPOUT = ("dora", "ia3")


class LoraSpec(BaseModel):
    """A validated LoRA network config, with alpha 0 already resolved to the rank."""

    model_config = ConfigDict(frozen=True)

    type: str
    dim: int
    alpha: float
    conv_dim: int | None
    conv_alpha: float | None
    dropout: float
    train_unet: bool
    train_text_encoder: bool


class LycorisSpec(BaseModel):
    """A validated LyCORIS network config (alpha 0 already resolved to the rank)."""

    model_config = ConfigDict(frozen=True)

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


NetworkSpec = LoraSpec | LycorisSpec

# The learning rates a network type needs where they differ from LoRA's (LyCORIS' guidance:
# (IA)^3 learns scaling vectors and wants 5e-3 to 1e-2, far above LoRA's 1e-4).
NEEDED_LR = {"ia3": (5.0e-3, 1.0e-2)}


def learning_rate_advice(
    network: NetworkSpec, unet_lr: float | None, te_lr: float | None, adaptive: bool
) -> str | None:
    """A warning when ``network``'s type needs learning rates its optimizer does not have
    (None for adaptive optimizers: they find their own step size)."""
    needed = NEEDED_LR.get(network.type)
    if needed is None or adaptive:
        return None
    low, high = needed
    parts = [("UNet", unet_lr, network.train_unet), ("text encoder", te_lr,
                                                         network.train_text_encoder)]  # fmt: skip
    off = [f"{name} {lr:g}" for name, lr, trained in parts if trained and lr and lr < low]
    if not off:
        return None
    return (
        f"network.type={network.type!r} trains with learning rates ({', '.join(off)}) below the "
        f"{low:g} to {high:g} it needs (LyCORIS' guidance for (IA)^3): it will barely move. Set "
        f"optimizer.lr={low:g} (and optimizer.unet_lr / text_encoder_lr), or use an adaptive "
        "optimizer (optimizer=prodigy)"
    )


def read_network(network_cfg: Any) -> NetworkSpec:
    """The typed spec of ``network_cfg`` (DictConfig, mapping or object); ConfigError lists
    every problem."""
    net_type = value(network_cfg, "type")
    if net_type in LORA_TYPES:
        return resolve_network_config(network_cfg)
    if net_type in LYCORIS_TYPES:
        return resolve_lycoris_config(network_cfg)
    raise ConfigError(f"network.type = {net_type!r}; allowed: {', '.join(NETWORK_TYPES)}")


def network_config_problems(network_cfg: Any) -> list[str]:
    """Every problem of ``network_cfg`` as messages (empty when valid), for up-front checks."""
    try:
        read_network(network_cfg)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _flags(problems: list[str], cfg: Any, show) -> dict[str, Any]:
    flags = {}
    for key in ("train_unet", "train_text_encoder"):
        flags[key] = value(cfg, key)
        if not isinstance(flags[key], bool):
            problems.append(f"network.{key} = {show(flags[key])}; must be true or false")
    if flags["train_unet"] is False and flags["train_text_encoder"] is False:
        problems.append(
            "network.train_unet and network.train_text_encoder are both false; "
            "at least one must be true"
        )
    return flags


# --- LoRA (LierLa / C3Lier) -------------------------------------------------------------------


def _check_rank_alpha(
    problems: list[str], dim_key: str, dim: Any, alpha_key: str, alpha: Any
) -> float | None:
    """Validate one (rank, alpha) pair; return alpha with 0 meaning alpha = rank."""
    if not is_int(dim) or dim < 1:
        problems.append(f"network.{dim_key} = {dim!r}; must be an integer >= 1")
        return None
    if not is_number(alpha) or alpha < 0:
        problems.append(f"network.{alpha_key} = {alpha!r}; must be a number >= 0 (0 = {dim_key})")
        return None
    if alpha > dim:
        problems.append(
            f"network.{alpha_key} = {alpha} exceeds network.{dim_key} = {dim}; alpha must be "
            f"in [0, {dim_key}] (0 means alpha = {dim_key})"
        )
        return None
    return float(dim if alpha == 0 else alpha)


def resolve_network_config(network_cfg: Any) -> LoraSpec:
    """Validate a LoRA ``network_cfg``; list every problem at once."""
    keys = ("type", "dim", "alpha", "conv_dim", "conv_alpha", "dropout")
    missing = [
        k for k in (*keys, "train_unet", "train_text_encoder") if value(network_cfg, k) is ABSENT
    ]
    if missing:
        raise ConfigError([f"network.{key} is missing" for key in missing])
    net_type, dim, alpha, conv_dim, conv_alpha, dropout = (value(network_cfg, k) for k in keys)
    problems: list[str] = []
    if net_type not in LORA_TYPES:
        problems.append(f"network.type = {net_type!r}; allowed: {', '.join(LORA_TYPES)}")
    alpha = _check_rank_alpha(problems, "dim", dim, "alpha", alpha)
    if net_type == "locon":
        if conv_dim is None or conv_alpha is None:
            problems.append(
                f"network.type = 'locon' needs network.conv_dim and network.conv_alpha "
                f"(got conv_dim={conv_dim!r}, conv_alpha={conv_alpha!r})"
            )
        else:
            conv_alpha = _check_rank_alpha(
                problems, "conv_dim", conv_dim, "conv_alpha", conv_alpha
            )
    elif conv_dim is not None or conv_alpha is not None:
        problems.append(
            f"network.conv_dim = {conv_dim!r} / network.conv_alpha = {conv_alpha!r} are set but "
            f"network.type = {net_type!r} has no conv adapters: use network=locon or set both null"
        )
    if not is_number(dropout) or not 0 <= dropout < 1:
        problems.append(f"network.dropout = {dropout!r}; must be a number in [0, 1)")
    flags = _flags(problems, network_cfg, repr)
    if problems:
        raise ConfigError(problems)
    locon = net_type == "locon"
    return LoraSpec(
        type=net_type,
        dim=dim,
        alpha=alpha,
        conv_dim=conv_dim if locon else None,
        conv_alpha=conv_alpha if locon else None,
        dropout=float(dropout),
        **flags,
    )


# --- LyCORIS ----------------------------------------------------------------------------------


def _show(v: Any) -> str:
    return "<missing>" if v is ABSENT else repr(v)


def _rank_alpha(problems: list[str], cfg: Any, dim_key: str, alpha_key: str, optional: bool):
    """(rank, alpha) of one pair of keys; alpha 0 means alpha = rank."""
    dim, alpha = value(cfg, dim_key), value(cfg, alpha_key)
    if optional and dim in (None, ABSENT) and alpha in (None, ABSENT):
        return None, None
    if not (is_int(dim) and dim >= 1):
        problems.append(f"network.{dim_key} = {_show(dim)}; must be an integer >= 1")
        return None, None
    if not (is_number(alpha) and alpha >= 0):
        problems.append(
            f"network.{alpha_key} = {_show(alpha)}; must be a number >= 0 (0 = {dim_key})"
        )
        return None, None
    return dim, float(alpha or dim)


def _type_specific(problems: list[str], cfg: Any, net_type: str) -> dict[str, Any]:
    if net_type == "ia3":
        # (IA)^3 learns one scaling vector per layer: there is no rank or alpha to set.
        for key in ("dim", "alpha", "conv_dim", "conv_alpha", "factor"):
            if value(cfg, key) not in (None, ABSENT):
                problems.append(
                    f"network.{key} = {value(cfg, key)!r}; must be null for network.type "
                    "'ia3' ((IA)^3 learns scaling vectors, it has no rank)"
                )
        return {"dim": None, "alpha": None, "conv_dim": None, "conv_alpha": None, "factor": None}
    dim, alpha = _rank_alpha(problems, cfg, "dim", "alpha", optional=False)
    conv_dim, conv_alpha = _rank_alpha(problems, cfg, "conv_dim", "conv_alpha", optional=True)
    factor = value(cfg, "factor")
    if net_type == "lokr":
        if not (factor == -1 or (is_int(factor) and factor >= 1)):
            problems.append(
                f"network.factor = {_show(factor)}; must be -1 (balanced) or an integer >= 1"
            )
    elif factor not in (None, ABSENT):
        problems.append(
            f"network.factor = {factor!r} is only used by network.type 'lokr' "
            f"(got {net_type!r}); set it null"
        )
    return {
        "dim": dim,
        "alpha": alpha,
        "conv_dim": conv_dim,
        "conv_alpha": conv_alpha,
        "factor": factor if net_type == "lokr" else None,
    }


def resolve_lycoris_config(network_cfg: Any) -> LycorisSpec:
    """Validate a LyCORIS ``network`` config (DictConfig, mapping or object)."""
    problems: list[str] = []
    net_type = value(network_cfg, "type")
    if net_type not in LYCORIS_TYPES:
        raise ConfigError(
            f"network.type = {_show(net_type)}; LyCORIS types: {', '.join(LYCORIS_TYPES)}"
        )
    ranks = _type_specific(problems, network_cfg, net_type)
    dropout = value(network_cfg, "dropout")
    if not (is_number(dropout) and 0 <= dropout < 1):
        problems.append(f"network.dropout = {_show(dropout)}; must be a number in [0, 1)")
    elif dropout and net_type in _NO_DROPOUT:
        problems.append(
            f"network.dropout = {dropout!r}; must be 0 for network.type {net_type!r} "
            "(LyCORIS does not apply dropout to it)"
        )
    flags = _flags(problems, network_cfg, _show)
    if problems:
        raise ConfigError(problems)
    return LycorisSpec(type=net_type, dropout=float(dropout), **ranks, **flags)

"""The ``optimizer`` group read into :class:`OptimizerSettings`: kohya's optimizer name, the
class's keyword arguments and the group learning rates, checked without importing torch or the
optimizer libraries. ``trainer.optim.optimizers`` imports the class, checks the arguments
against it and builds it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainer.errors import ConfigError
from trainer.settings.read import is_number, value


@dataclass(frozen=True)
class OptimizerSpec:
    """Where one optimizer lives and how it behaves."""

    module: str  # import path of the class
    cls_name: str
    package: str | None  # pip package to name when the import fails; None = always installed
    d_adaptive: bool = False  # D-Adaptation family: keeps its step size estimate in group["d"]


# Keys are kohya's optimizer_type spellings (kept for ss_optimizer); names are matched
# case-insensitively.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "AdamW": OptimizerSpec("torch.optim", "AdamW", None),
    "AdamW8bit": OptimizerSpec("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "Lion": OptimizerSpec("bitsandbytes.optim", "Lion", "bitsandbytes"),
    "Lion8bit": OptimizerSpec("bitsandbytes.optim", "Lion8bit", "bitsandbytes"),
    "SGDNesterov": OptimizerSpec("torch.optim", "SGD", None),
    "SGDNesterov8bit": OptimizerSpec("bitsandbytes.optim", "SGD8bit", "bitsandbytes"),
    "DAdaptAdam": OptimizerSpec("dadaptation", "DAdaptAdam", "dadaptation", d_adaptive=True),
    "DAdaptLion": OptimizerSpec("dadaptation", "DAdaptLion", "dadaptation", d_adaptive=True),
    "Prodigy": OptimizerSpec("prodigyopt", "Prodigy", "prodigyopt", d_adaptive=True),
    "AdaFactor": OptimizerSpec("transformers.optimization", "Adafactor", "transformers"),
}
ADAFACTOR = "AdaFactor"
# Constructor arguments the config sets elsewhere (optimizer.lr and the parameter groups).
RESERVED_ARGS = ("params", "lr")
LR_KEYS = ("lr", "unet_lr", "text_encoder_lr", "text_encoder_2_lr")


class OptimizerSettings(BaseModel):
    """A validated optimizer group: kohya's name, the class's arguments, the group LRs."""

    model_config = ConfigDict(frozen=True)

    name: str
    args: dict[str, Any]
    lr: float | None  # None when the optimizer sets its own LR (AdaFactor, relative_step)
    unet_lr: float | None
    text_encoder_lr: float | None
    # SDXL's second text encoder (OpenCLIP ViT-bigG); unset = text_encoder_lr.
    text_encoder_2_lr: float | None = None
    # The LRs as configured (logged when AdaFactor ignores them).
    configured_lrs: dict[str, Any]

    @property
    def spec(self) -> OptimizerSpec:
        return OPTIMIZERS[self.name]

    @property
    def adaptive(self) -> bool:
        """It finds its own step size: DAdapt*, Prodigy, AdaFactor with relative_step."""
        return self.spec.d_adaptive or relative_step(self.name, self.args)


def canonical_name(opt_cfg: Any) -> str:
    """The kohya spelling of ``optimizer.name``; ConfigError listing the allowed names."""
    raw = value(opt_cfg, "name", None)
    for name in OPTIMIZERS:
        if isinstance(raw, str) and raw.lower() == name.lower():
            return name
    raise ConfigError(
        f"optimizer.name: {raw!r} is not a known optimizer; allowed: {', '.join(OPTIMIZERS)}"
    )


def optimizer_args(opt_cfg: Any) -> dict[str, Any]:
    """``optimizer.args`` as a plain dict; YAML lists become tuples (betas=(0.9, 0.999))."""
    args = value(opt_cfg, "args", None)
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"optimizer.args: {args!r} must be a mapping of keyword arguments")
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def relative_step(name: str, args: Mapping[str, Any]) -> bool:
    # transformers' Adafactor defaults to relative_step=True.
    return name == ADAFACTOR and bool(args.get("relative_step", True))


def is_adaptive(opt_cfg: Any) -> bool:
    """True when the optimizer finds its own step size: DAdapt*, Prodigy, AdaFactor with
    relative_step. Their ``lr`` is a multiplier (usually 1.0) or unused, not a step size."""
    return read_optimizer(opt_cfg).adaptive


def _check_lr(key: str, lr: Any, allow_null: bool, problems: list[str]) -> float | None:
    if lr is None:
        if not allow_null:
            problems.append(f"optimizer.{key}: null is not allowed; set a number > 0")
        return None
    if not is_number(lr):
        problems.append(f"optimizer.{key}: {lr!r} must be a number > 0")
        return None
    if not math.isfinite(lr) or lr <= 0:
        problems.append(f"optimizer.{key}: {lr} must be > 0")
        return None
    return float(lr)


def read_optimizer(opt_cfg: Any) -> OptimizerSettings:
    """Validate ``opt_cfg`` (the typed settings pass through); one ConfigError lists every
    problem found without importing the class."""
    if isinstance(opt_cfg, OptimizerSettings):
        return opt_cfg
    problems: list[str] = []
    try:
        name: str | None = canonical_name(opt_cfg)
    except ConfigError as exc:
        problems.extend(exc.problems)
        name = None
    args = optimizer_args(opt_cfg)
    own_lr = name is not None and relative_step(name, args)
    configured = {key: value(opt_cfg, key, None) for key in LR_KEYS}
    lr = _check_lr("lr", configured["lr"], own_lr, problems)
    unet_lr = _check_lr("unet_lr", configured["unet_lr"], True, problems)
    te_lr = _check_lr("text_encoder_lr", configured["text_encoder_lr"], True, problems)
    te2_lr = _check_lr("text_encoder_2_lr", configured["text_encoder_2_lr"], True, problems)
    for key in args:
        if key in RESERVED_ARGS:
            problems.append(f"optimizer.args.{key}: set by the trainer (use optimizer.lr, ...)")
    if name == ADAFACTOR and args.get("warmup_init") and not own_lr:
        problems.append("optimizer.args.warmup_init: true needs relative_step: true")
    if problems:
        raise ConfigError(problems)
    text_encoder_lr = None if own_lr else (te_lr if te_lr is not None else lr)
    return OptimizerSettings(
        name=name,
        args=args,
        lr=None if own_lr else lr,
        unet_lr=None if own_lr else (unet_lr if unet_lr is not None else lr),
        text_encoder_lr=text_encoder_lr,
        text_encoder_2_lr=None if own_lr else (te2_lr if te2_lr is not None else text_encoder_lr),
        configured_lrs=configured,
    )

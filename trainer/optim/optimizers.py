"""Optimizers by kohya's ``optimizer_type`` names, built from the ``optimizer`` config group.

The classes come from the field's libraries (torch, bitsandbytes, dadaptation, prodigyopt,
transformers); this module only maps names to classes, validates the config before anything is
built (every problem at once), splits the parameters into a UNet and a text-encoder group with
their own learning rates, and reads back the numbers worth logging.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.errors import BackendMissingError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizerSpec:
    """Where one optimizer lives and how it behaves."""

    module: str  # import path of the class
    cls_name: str
    package: str | None  # pip package to name when the import fails; None = always installed
    d_adaptive: bool = False  # D-Adaptation family: keeps its step size estimate in group["d"]


# Keys are kohya's optimizer_type spellings; names are matched case-insensitively.
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
_RESERVED_ARGS = ("params", "lr")
_GROUP_SUFFIX = {"unet": "unet", "text_encoder": "te"}


@dataclass(frozen=True)
class OptimizerPlan:
    """A validated optimizer config: the class, its keyword arguments and the group LRs."""

    name: str
    spec: OptimizerSpec
    cls: type[torch.optim.Optimizer]
    args: dict[str, Any]
    lr: float | None  # None when the optimizer sets its own LR (AdaFactor, relative_step)
    unet_lr: float | None
    text_encoder_lr: float | None


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a DictConfig, a mapping or a dataclass, with a default when absent."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def canonical_name(opt_cfg: Any) -> str:
    """The kohya spelling of ``optimizer.name``; ConfigError listing the allowed names."""
    raw = cfg_get(opt_cfg, "name")
    for name in OPTIMIZERS:
        if isinstance(raw, str) and raw.lower() == name.lower():
            return name
    raise ConfigError(_unknown_name_message(raw))


def _unknown_name_message(raw: Any) -> str:
    return f"optimizer.name: {raw!r} is not a known optimizer; allowed: {', '.join(OPTIMIZERS)}"


def optimizer_args(opt_cfg: Any) -> dict[str, Any]:
    """``optimizer.args`` as a plain dict; YAML lists become tuples (betas=(0.9, 0.999))."""
    args = cfg_get(opt_cfg, "args")
    if args is None:
        return {}
    if isinstance(args, DictConfig):
        args = OmegaConf.to_container(args, resolve=True)
    if not isinstance(args, Mapping):
        raise ConfigError(f"optimizer.args: {args!r} must be a mapping of keyword arguments")
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def _relative_step(name: str, args: Mapping[str, Any]) -> bool:
    # transformers' Adafactor defaults to relative_step=True.
    return name == ADAFACTOR and bool(args.get("relative_step", True))


def is_adaptive(opt_cfg: Any) -> bool:
    """True when the optimizer finds its own step size: DAdapt*, Prodigy, AdaFactor with
    relative_step. Their ``lr`` is a multiplier (usually 1.0) or unused, not a step size."""
    name = canonical_name(opt_cfg)
    return OPTIMIZERS[name].d_adaptive or _relative_step(name, optimizer_args(opt_cfg))


def load_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Import the class of a known optimizer; BackendMissingError names the pip package."""
    spec = OPTIMIZERS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendMissingError(f"optimizer {name}", spec.package or spec.module) from exc
    return getattr(module, spec.cls_name)


def _check_lr(key: str, value: Any, allow_null: bool, problems: list[str]) -> float | None:
    if value is None:
        if not allow_null:
            problems.append(f"optimizer.{key}: null is not allowed; set a number > 0")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"optimizer.{key}: {value!r} must be a number > 0")
        return None
    if not math.isfinite(value) or value <= 0:
        problems.append(f"optimizer.{key}: {value} must be > 0")
        return None
    return float(value)


def _accepted_args(cls: type) -> list[str] | None:
    """Keyword arguments the constructor takes besides params and lr; None if it takes **kw."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.name not in _RESERVED_ARGS]


def _check_args(name: str, cls: type, args: Mapping[str, Any], problems: list[str]) -> None:
    accepted = _accepted_args(cls)
    for key in args:
        if key in _RESERVED_ARGS:
            problems.append(f"optimizer.args.{key}: set by the trainer (use optimizer.lr, ...)")
        elif accepted is not None and key not in accepted:
            problems.append(
                f"optimizer.args.{key}: not an argument of {cls.__module__}.{cls.__name__} "
                f"({name}); accepted: {', '.join(accepted)}"
            )
    if name == ADAFACTOR and args.get("warmup_init") and not _relative_step(name, args):
        problems.append("optimizer.args.warmup_init: true needs relative_step: true")


def plan_optimizer(opt_cfg: Any) -> OptimizerPlan:
    """Validate ``opt_cfg`` and resolve it; one ConfigError lists every problem found."""
    problems: list[str] = []
    try:
        name: str | None = canonical_name(opt_cfg)
    except ConfigError as exc:
        problems.extend(exc.problems)
        name = None
    args = optimizer_args(opt_cfg)
    own_lr = name is not None and _relative_step(name, args)
    lr = _check_lr("lr", cfg_get(opt_cfg, "lr"), own_lr, problems)
    unet_lr = _check_lr("unet_lr", cfg_get(opt_cfg, "unet_lr"), True, problems)
    te_lr = _check_lr("text_encoder_lr", cfg_get(opt_cfg, "text_encoder_lr"), True, problems)
    cls = None
    if name is not None:
        try:
            cls = load_optimizer_class(name)
        except BackendMissingError:
            if problems:  # report the config's own mistakes first
                raise ConfigError(problems) from None
            raise
        _check_args(name, cls, args, problems)
    if problems:
        raise ConfigError(problems)
    return OptimizerPlan(
        name=name,
        spec=OPTIMIZERS[name],
        cls=cls,
        args=args,
        lr=None if own_lr else lr,
        unet_lr=None if own_lr else (unet_lr if unet_lr is not None else lr),
        text_encoder_lr=None if own_lr else (te_lr if te_lr is not None else lr),
    )


def _param_groups(plan: OptimizerPlan, unet_params: list, te_params: list) -> list[dict]:
    groups = []
    for group_name, params, lr in (
        ("unet", unet_params, plan.unet_lr),
        ("text_encoder", te_params, plan.text_encoder_lr),
    ):
        params = list(params)
        if not params:
            continue
        group: dict[str, Any] = {"params": params, "name": group_name}
        if lr is not None:
            group["lr"] = lr
        groups.append(group)
    if not groups:
        raise ConfigError(
            "optimizer: no trainable parameters (both the UNet and the text-encoder lists are "
            "empty); enable network.train_unet or network.train_text_encoder"
        )
    return groups


def build_optimizer(
    opt_cfg: Any, unet_params: list, te_params: list, fused: bool = False
) -> torch.optim.Optimizer:
    """The optimizer over a "unet" and a "text_encoder" param group (an empty one is left out).

    AdaFactor with relative_step=True computes its own learning rate and transformers refuses
    an explicit one, so the configured LRs are not passed (and a log line says so).

    ``fused``: use torch's fused kernel (``fused=True``) when the class has one (AdamW, Adam,
    SGD), every parameter is on one CUDA or CPU device, and ``optimizer.args`` does not choose
    an implementation itself; other optimizers ignore it. The update is the same up to
    floating-point rounding, in one kernel launch instead of several per tensor.
    """
    plan = plan_optimizer(opt_cfg)
    groups = _param_groups(plan, unet_params, te_params)
    kwargs = dict(plan.args)
    if fused and _can_fuse(plan.cls, groups, kwargs):
        kwargs["fused"] = True
    if plan.lr is not None:
        kwargs["lr"] = plan.lr
    else:
        configured = {k: cfg_get(opt_cfg, k) for k in ("lr", "unet_lr", "text_encoder_lr")}
        set_lrs = {k: v for k, v in configured.items() if v is not None}
        if set_lrs:
            log.info(
                "optimizer %s: %s not passed: AdaFactor with relative_step=True sets its own "
                "learning rate",
                plan.name,
                ", ".join(f"{k}={v}" for k, v in set_lrs.items()),
            )
    try:
        optimizer = plan.cls(groups, **kwargs)
    except (ValueError, NotImplementedError) as exc:  # the library's own range checks
        raise ConfigError(f"optimizer ({plan.name}, args {plan.args}): {exc}") from exc
    log.info("optimizer: %s", describe_optimizer(opt_cfg))
    return optimizer


def _can_fuse(cls: type, groups: list[dict], kwargs: dict[str, Any]) -> bool:
    if cls not in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
        return False
    if any(k in kwargs for k in ("fused", "foreach", "differentiable")):
        return False
    params = [p for g in groups for p in g["params"]]
    kinds = {p.device.type for p in params}
    return (
        len(kinds) == 1 and kinds <= {"cuda", "cpu"} and all(p.is_floating_point() for p in params)
    )


def describe_optimizer(opt_cfg: Any) -> str:
    """kohya's ``ss_optimizer`` value: ``module.Class(arg1=v1,arg2=v2)`` (no parentheses
    without args), with the class's real module path."""
    plan = plan_optimizer(opt_cfg)
    text = f"{plan.cls.__module__}.{plan.cls.__name__}"
    if plan.args:
        text += "(" + ",".join(f"{k}={v}" for k, v in plan.args.items()) + ")"
    return text


def _current_lr(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> float | None:
    """The LR a group steps with now; for AdaFactor with relative_step, the one it computes."""
    get_lr = getattr(optimizer, "_get_lr", None)
    if group.get("relative_step") and get_lr is not None:
        state = optimizer.state.get(group["params"][0], {})
        if "step" in state and "RMS" in state:
            return float(get_lr(group, state))
    lr = group.get("lr")
    return None if lr is None else float(lr)


def lr_metrics(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``train/lr_unet`` and ``train/lr_te``; for the D-Adaptation family also ``train/d`` and
    the effective LRs ``train/d_lr_unet`` / ``train/d_lr_te`` (d * lr, kohya's "lr/d*lr").

    A group's LR that is not known yet (AdaFactor before its first step) is left out.
    """
    metrics: dict[str, float] = {}
    for index, group in enumerate(optimizer.param_groups):
        suffix = _GROUP_SUFFIX.get(group.get("name"), f"group{index}")
        lr = _current_lr(optimizer, group)
        if lr is not None:
            metrics[f"train/lr_{suffix}"] = lr
        if "d" in group:
            d = float(group["d"])
            metrics["train/d"] = d
            if lr is not None:
                metrics[f"train/d_lr_{suffix}"] = d * lr
    return metrics


def optimizer_config_problems(opt_cfg: Any) -> list[str]:
    """Every problem of ``opt_cfg`` as messages (empty when it builds), for up-front checks:
    the config's own rules, then the class's (constructed on a dummy parameter)."""
    try:
        plan = plan_optimizer(opt_cfg)
    except ConfigError as exc:
        return list(exc.problems)
    except BackendMissingError as exc:
        return [f"optimizer.name: {exc}"]
    return construction_problems(plan)


# What an optimizer's constructor raises for an argument of the wrong type or range.
_REFUSALS = (TypeError, ValueError, NotImplementedError, AssertionError)


def _refusal(plan: OptimizerPlan, args: Mapping[str, Any]) -> Exception | None:
    group: dict[str, Any] = {"params": [torch.nn.Parameter(torch.zeros(2, 2))]}
    if plan.unet_lr is not None:
        group["lr"] = plan.unet_lr
    kwargs = dict(args)
    if plan.lr is not None:
        kwargs["lr"] = plan.lr
    try:
        with torch.no_grad():
            plan.cls([group], **kwargs)
    except _REFUSALS as exc:
        return exc
    except Exception:  # noqa: BLE001 - not the arguments (a missing GPU ...): the build says
        return None
    return None


def construction_problems(plan: OptimizerPlan) -> list[str]:
    """Construct the optimizer class with ``optimizer.args`` over one dummy parameter (cheap:
    constructors check their arguments and allocate no state) and report what it refuses under
    each argument that causes it: added one at a time to those it accepted, in order."""
    refused = _refusal(plan, plan.args)
    if refused is None:
        return []
    cls = f"{plan.cls.__module__}.{plan.cls.__name__}"
    accepted: dict[str, Any] = {}
    problems = []
    for key, value in plan.args.items():
        exc = _refusal(plan, {**accepted, key: value})
        if exc is None:
            accepted[key] = value
        else:
            problems.append(
                f"optimizer.args.{key}: {value!r} is refused by {cls} ({plan.name}): "
                f"{type(exc).__name__}: {exc}"
            )
    return problems or [
        f"optimizer.args: {plan.args} (lr {plan.lr}): {cls} refuses them: "
        f"{type(refused).__name__}: {refused}"
    ]

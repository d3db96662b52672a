"""Optimizers by kohya's ``optimizer_type`` names, built from the ``optimizer`` config group.

The classes come from the field's libraries (torch, bitsandbytes, dadaptation, prodigyopt,
transformers); this module only maps names to classes, validates the config before anything is
built (every problem at once), splits the parameters into a UNet and a text-encoder group with
their own learning rates, and reads back the numbers worth logging.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from trainer.errors import BackendMissingError, ConfigError
from trainer.logs import printed_to_log
from trainer.settings.optimizer import (  # noqa: F401 (re-exported)
    ADAFACTOR,
    OPTIMIZERS,
    RESERVED_ARGS,
    OptimizerSettings,
    OptimizerSpec,
    canonical_name,
    is_adaptive,
    optimizer_args,
    read_optimizer,
)

log = logging.getLogger(__name__)


_GROUP_SUFFIX = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}


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
    configured_lrs: Mapping[str, float | None]
    text_encoder_2_lr: float | None = None


def load_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Import the class of a known optimizer; BackendMissingError names the pip package."""
    spec = OPTIMIZERS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendMissingError(f"optimizer {name}", spec.package or spec.module) from exc
    return getattr(module, spec.cls_name)


def _accepted_args(cls: type) -> list[str] | None:
    """Keyword arguments the constructor takes besides params and lr; None if it takes **kw."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.name not in RESERVED_ARGS]


def _check_args(name: str, cls: type, args: Mapping[str, Any], problems: list[str]) -> None:
    accepted = _accepted_args(cls)
    for key in args:
        if accepted is not None and key not in accepted and key not in RESERVED_ARGS:
            problems.append(
                f"optimizer.args.{key}: not an argument of {cls.__module__}.{cls.__name__} "
                f"({name}); accepted: {', '.join(accepted)}"
            )


def plan_optimizer(opt: OptimizerSettings | Any) -> OptimizerPlan:
    """The typed settings (or the group, read by ``read_optimizer``) with the class imported
    and the arguments checked against its constructor; one ConfigError lists every problem
    (the group's own and the class's)."""
    problems: list[str] = []
    try:
        settings = read_optimizer(opt)
        name, args = settings.name, settings.args
    except ConfigError as exc:
        problems, settings = list(exc.problems), None
        name, args = _name_and_args(opt)
        if name is None:
            raise
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
        spec=settings.spec,
        cls=cls,
        args=dict(args),
        lr=settings.lr,
        unet_lr=settings.unet_lr,
        text_encoder_lr=settings.text_encoder_lr,
        configured_lrs=settings.configured_lrs,
        text_encoder_2_lr=settings.text_encoder_2_lr,
    )


def _name_and_args(opt: Any) -> tuple[str | None, dict[str, Any]]:
    """The known name and the args of a group with other problems (None when unknown)."""
    try:
        return canonical_name(opt), optimizer_args(opt)
    except ConfigError:
        return None, {}


def _param_groups(
    plan: OptimizerPlan, unet_params: list, te_params: list | Mapping[str, list]
) -> list[dict]:
    """One group per part: ``te_params`` is one list (the text encoder), or lists by component
    (SDXL: ``text_encoder`` at ``text_encoder_lr``, ``text_encoder_2`` at
    ``text_encoder_2_lr``)."""
    lrs = {"text_encoder": plan.text_encoder_lr, "text_encoder_2": plan.text_encoder_2_lr}
    te_groups = te_params if isinstance(te_params, Mapping) else {"text_encoder": te_params}
    groups = []
    for group_name, params, lr in (
        ("unet", unet_params, plan.unet_lr),
        *((name, params, lrs[name]) for name, params in te_groups.items()),
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
    opt: OptimizerSettings | Any,
    unet_params: list,
    te_params: list | Mapping[str, list],
    fused: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer over a "unet" and a "text_encoder" param group (an empty one is left out;
    with ``te_params`` by component, one group per text encoder: SDXL's "text_encoder_2").

    AdaFactor with relative_step=True computes its own learning rate and transformers refuses
    an explicit one, so the configured LRs are not passed (and a log line says so).

    ``fused``: use torch's fused kernel (``fused=True``) when the class has one (AdamW, Adam,
    SGD), every parameter is on one CUDA or CPU device, and ``optimizer.args`` does not choose
    an implementation itself; other optimizers ignore it. The update is the same up to
    floating-point rounding, in one kernel launch instead of several per tensor.
    """
    plan = plan_optimizer(opt)
    groups = _param_groups(plan, unet_params, te_params)
    kwargs = dict(plan.args)
    if fused and _can_fuse(plan.cls, groups, kwargs):
        kwargs["fused"] = True
    if plan.lr is not None:
        kwargs["lr"] = plan.lr
    else:
        set_lrs = {k: v for k, v in plan.configured_lrs.items() if v is not None}
        if set_lrs:
            log.info(
                "optimizer %s: %s not passed: AdaFactor with relative_step=True sets its own "
                "learning rate",
                plan.name,
                ", ".join(f"{k}={v}" for k, v in set_lrs.items()),
            )
    try:
        with printed_to_log(log):  # Prodigy prints "Using decoupled weight decay"
            optimizer = plan.cls(groups, **kwargs)
    except (ValueError, NotImplementedError) as exc:  # the library's own range checks
        raise ConfigError(f"optimizer ({plan.name}, args {plan.args}): {exc}") from exc
    log.info("optimizer: %s", describe_plan(plan))
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


def describe_optimizer(opt: OptimizerSettings | Any) -> str:
    """kohya's ``ss_optimizer`` value: ``module.Class(arg1=v1,arg2=v2)`` (no parentheses
    without args), with the class's real module path."""
    return describe_plan(plan_optimizer(opt))


def describe_plan(plan: OptimizerPlan) -> str:
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


def optimizer_config_problems(opt: OptimizerSettings | Any) -> list[str]:
    """Every problem of ``opt`` as messages (empty when it builds), for up-front checks:
    the config's own rules, then the class's (constructed on a dummy parameter)."""
    try:
        plan = plan_optimizer(opt)
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
    try:  # a check, not the run's optimizer: what the class prints is dropped
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
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

"""Shared pieces of the LoRA tools: model weights as state dicts, kohya targets, low-rank math.

The tools work on plain state dicts (diffusers/transformers parameter names), so that the same
code serves models loaded from files, models still in memory after training, and synthetic
weights in tests. Which layers a kohya LoRA adapts is decided from the parameter names, with
the same rules as ``trainer.networks.lora`` (which decides from the module classes):

* UNet, LierLa: Linear and 1x1-conv weights inside a ``Transformer2DModel``
  (``*.attentions.N.*``);
* UNet, C3Lier (only when a conv rank is given): also every Linear/conv weight inside a
  ``ResnetBlock2D`` / ``Downsample2D`` / ``Upsample2D`` (``*.resnets.N.*``,
  ``*.downsamplers.N.*``, ``*.upsamplers.N.*``); 3x3 convs get the conv rank;
* text encoder: Linear weights inside ``CLIPAttention`` / ``CLIPMLP``
  (``encoder.layers.N.self_attn.*``, ``encoder.layers.N.mlp.*``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.errors import LorasweepError
from trainer.networks import kohya_format as kf

COMPONENTS = ("unet", "text_encoder")
_UNET_LINEAR = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.")
_UNET_CONV = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|downsamplers|upsamplers)\.\d+\."
)
_TEXT_ENCODER = re.compile(r"^encoder\.layers\.\d+\.(self_attn|mlp)\.")
# transformers 4 kept CLIPTextModel's weights under ``text_model.``; 5 does not.
_TE_ROOT = "text_model."


class ToolError(LorasweepError):
    """A LoRA tool was given inputs it cannot work with (bad rank, mismatched models...)."""


@dataclass(frozen=True)
class Target:
    """One layer a kohya LoRA adapts: where its weight lives and what kind of layer it is."""

    kohya_name: str
    component: str  # "unet", "text_encoder" (or SDXL's "text_encoder_2")
    weight_key: str  # key of the layer's weight in the component's state dict
    kind: str  # "linear", "conv1x1" or "conv3x3"


def _state_dict(part: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(part, nn.Module):
        state = part.state_dict()
    elif isinstance(part, Mapping):
        state = dict(part)
    else:
        raise ToolError(f"{what}: expected a module or a state dict, got {type(part).__name__}")
    text = what.rsplit(".", 1)[-1].startswith("text_encoder")
    return {k.removeprefix(_TE_ROOT) if text else k: v for k, v in state.items()}


def component_state_dicts(
    model: Any, name: str = "model", components: tuple[str, ...] = COMPONENTS
) -> dict[str, dict[str, torch.Tensor]]:
    """``{"unet": state dict, "text_encoder": state dict}`` of ``model`` (``components``:
    SDXL's adds ``text_encoder_2``).

    ``model`` is an ``SDComponents`` (anything with ``.unet`` and ``.text_encoder``), or a
    mapping with the keys ``unet`` and ``text_encoder`` whose values are modules or state
    dicts. Text-encoder keys lose a leading ``text_model.`` (transformers 4's layout).
    """
    parts = {}
    for component in components:
        if isinstance(model, Mapping):
            if component not in model:
                raise ToolError(f"{name}: no {component!r} entry (keys: {sorted(model)})")
            part = model[component]
        elif hasattr(model, component):
            part = getattr(model, component)
        else:
            raise ToolError(f"{name}: has no {component}; give SDComponents or a mapping")
        parts[component] = _state_dict(part, f"{name}.{component}")
    return parts


def layer_kind(weight: torch.Tensor) -> str | None:
    """``linear`` (2-D), ``conv1x1`` / ``conv3x3`` (4-D) or None (norms, biases, embeddings)."""
    if weight.ndim == 2:
        return "linear"
    if weight.ndim == 4:
        return "conv1x1" if tuple(weight.shape[2:]) == (1, 1) else "conv3x3"
    return None


def lora_targets(
    states: Mapping[str, Mapping[str, torch.Tensor]], with_conv: bool, family=None
) -> dict[str, Target]:
    """The layers a kohya LoRA adapts in these component state dicts, by kohya name (the
    family's names; default SD 1.x's)."""
    name_of = family.kohya_module_name if family is not None else kf.kohya_module_name
    targets: dict[str, Target] = {}
    for component, state in states.items():
        for key, weight in state.items():
            if not key.endswith(".weight"):
                continue
            path, kind = key.removesuffix(".weight"), layer_kind(weight)
            if kind is None or not _is_target(component, path, kind, with_conv):
                continue
            name = name_of(component, path)
            targets[name] = Target(name, component, key, kind)
    return dict(sorted(targets.items()))


def _is_target(component: str, path: str, kind: str, with_conv: bool) -> bool:
    if component.startswith("text_encoder"):
        return kind == "linear" and bool(_TEXT_ENCODER.match(path))
    if _UNET_LINEAR.match(path):
        return kind in ("linear", "conv1x1")
    return with_conv and bool(_UNET_CONV.match(path))


def check_same_architecture(
    a: Mapping[str, Mapping[str, torch.Tensor]],
    b: Mapping[str, Mapping[str, torch.Tensor]],
    a_name: str,
    b_name: str,
    show: int = 5,
) -> None:
    """Raise ``ToolError`` unless both models have the same keys with the same shapes."""
    problems = []
    for component in a:
        sa, sb = a[component], b[component]
        for label, keys in ((a_name, set(sa) - set(sb)), (b_name, set(sb) - set(sa))):
            if keys:
                names = ", ".join(sorted(keys)[:show])
                problems.append(f"{len(keys)} {component} key(s) only in {label}: {names}")
        shapes = [
            f"{component}.{k}: {tuple(sa[k].shape)} vs {tuple(sb[k].shape)}"
            for k in sorted(set(sa) & set(sb))
            if sa[k].shape != sb[k].shape
        ]
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:show]))
    if problems:
        raise ToolError(
            f"{a_name} and {b_name} are models of different architectures (an SD 1.x LoRA "
            "needs two models of the same architecture):\n  " + "\n  ".join(problems)
        )


def flat(weight: torch.Tensor) -> torch.Tensor:
    """A layer weight (or delta) as a matrix: convs flatten to [out, in*kh*kw]."""
    return weight.reshape(weight.shape[0], -1)


def clamp_quantile_(tensors: list[torch.Tensor], quantile: float) -> None:
    """Clip the entries of ``tensors`` in place to +-(the ``quantile`` of their |values|).

    Extraction does this (kohya's ``clamp_quantile``, default 0.99) so that a few huge
    entries do not blow up fp16 files; 1.0 disables it.
    """
    if quantile >= 1.0:
        return
    values = torch.cat([t.flatten().abs() for t in tensors])
    # kthvalue, not torch.quantile: quantile refuses inputs over 2**24 elements.
    k = min(values.numel(), max(1, math.ceil(quantile * values.numel())))
    limit = torch.kthvalue(values.float().cpu(), k).values.item()
    for t in tensors:
        t.clamp_(-limit, limit)


def truncated_svd(
    delta: torch.Tensor, rank: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U[:, :r], S[:r], Vh[:r]) of a 2-D ``delta`` in fp32, r = min(rank, min(delta.shape))."""
    u, s, vh = torch.linalg.svd(delta.to(device, torch.float32), full_matrices=False)
    r = min(rank, s.numel())
    return u[:, :r], s[:r], vh[:r]


def to_lora_pair(
    up2d: torch.Tensor, down2d: torch.Tensor, weight_shape: torch.Size | tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices ``up`` [out, r] and ``down`` [r, in*k*k] in the layer's kohya shapes.

    Linear: down [r, in], up [out, r]; conv: down [r, in, kh, kw], up [out, r, 1, 1].
    """
    if len(weight_shape) == 4:
        rank = down2d.shape[0]
        return up2d.reshape(*up2d.shape, 1, 1), down2d.reshape(rank, *weight_shape[1:])
    return up2d, down2d


def lora_delta(
    state: Mapping[str, torch.Tensor], name: str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The 2-D weight delta ``up @ down * alpha / rank`` of module ``name`` of a kohya LoRA."""
    down_key, up_key, alpha_key = kf.lora_keys(name)
    down, up = flat(state[down_key].to(dtype)), flat(state[up_key].to(dtype))
    rank = down.shape[0]
    alpha = float(state[alpha_key]) if alpha_key in state else float(rank)
    return (up @ down) * (alpha / rank)


def lora_module_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The kohya module names that have a ``lora_down`` weight in ``state``, sorted."""
    return sorted(k.removesuffix(kf.DOWN_SUFFIX) for k in state if k.endswith(kf.DOWN_SUFFIX))

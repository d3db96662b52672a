"""Resize a kohya LoRA's rank by truncated SVD of each module's weight delta.

Each module's delta ``up @ down * alpha / rank`` (3x3 convs flattened) is factored as
``U S Vh`` and cut to a new rank k, chosen per module:

* fixed: ``new_rank`` (a module whose rank is already lower keeps its rank);
* ``sv_ratio`` X: keep the singular values >= (largest / X);
* ``sv_fro`` X: the smallest k whose singular values keep the fraction X of the delta's
  Frobenius norm, ``sqrt(sum_{i<k} s_i^2 / sum s_i^2) >= X``;
* ``sv_cumulative`` X: the smallest k with ``sum_{i<k} s_i / sum s_i >= X``;

dynamic ranks are capped by ``new_rank`` (default: the original rank) and are at least 1.
The module keeps its scale ``alpha / rank``: new ``alpha`` = scale * k, and the singular values
are split evenly between ``up`` and ``down`` (``sqrt(S / scale)`` each). At the original rank
the result is lossless (up to float rounding); dropping singular values removes exactly their
share of the delta (Eckart-Young). DoRA files resize too: their ``dora_scale`` is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from trainer.networks import kohya_format as kf
from trainer.networks.detect import detect_network_type
from trainer.tools.common import (
    ToolError,
    lora_delta,
    lora_module_names,
    to_lora_pair,
    truncated_svd,
)

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
RESIZABLE = ("lora", "locon", "dora")


@dataclass
class ResizeResult:
    """The resized LoRA and what happened to each module."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]
    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (old, new)
    fro_retained: dict[str, float] = field(default_factory=dict)  # name -> fraction kept


def _check_method(method: str | None, param: float | None) -> None:
    if method is None:
        if param is not None:
            raise ToolError("resize: dynamic_param is set but dynamic_method is not")
        return
    if method not in DYNAMIC_METHODS:
        raise ToolError(f"resize: dynamic_method = {method!r}; allowed: {DYNAMIC_METHODS}")
    if not isinstance(param, int | float) or isinstance(param, bool):
        raise ToolError(f"resize: {method} needs a numeric dynamic_param, got {param!r}")
    if method == "sv_ratio" and param < 1:
        raise ToolError(f"resize: sv_ratio dynamic_param = {param}; must be >= 1")
    if method != "sv_ratio" and not 0 < param <= 1:
        raise ToolError(f"resize: {method} dynamic_param = {param}; must be in (0, 1]")


def _check_rank(new_rank, method, original: int, source: str) -> int:
    if new_rank is None:
        if method is None:
            raise ToolError("resize: give new_rank, or a dynamic_method and dynamic_param")
        return original
    if isinstance(new_rank, bool) or not isinstance(new_rank, int) or new_rank < 1:
        raise ToolError(f"resize: new_rank = {new_rank!r}; must be an integer >= 1")
    if new_rank > original:
        raise ToolError(
            f"resize: new_rank = {new_rank} is above the rank of {source} ({original}); "
            f"allowed: 1 to {original} (resizing cannot add information)"
        )
    return new_rank


def dynamic_rank(singular_values: torch.Tensor, method: str, param: float) -> int:
    """The rank that ``method`` / ``param`` keep of these (descending) singular values."""
    s = singular_values.double()
    if float(s[0]) <= 0:
        return 1
    if method == "sv_ratio":
        return int((s >= s[0] / param).sum())
    weights = s**2 if method == "sv_fro" else s
    cumulative = torch.cumsum(weights, 0) / weights.sum()
    if method == "sv_fro":
        cumulative = cumulative.sqrt()
    # Rounding must not make a fraction of exactly 1.0 unreachable.
    reached = (cumulative >= param - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else s.numel()


def _resize_module(state, name, cap, method, param, device):
    down_key, up_key, alpha_key = kf.lora_keys(name)
    down, up = state[down_key], state[up_key]
    old_rank = down.shape[0]
    scale = float(state[alpha_key]) / old_rank if alpha_key in state else 1.0
    delta = lora_delta(state, name)
    u, s, vh = truncated_svd(delta, old_rank, device)
    k = dynamic_rank(s, method, param) if method else old_rank
    k = max(1, min(k, cap, s.numel()))
    energy = float((s[:k] ** 2).sum() / (s**2).sum()) if float(s.abs().sum()) > 0 else 1.0
    root = (s[:k] / scale).sqrt()
    up_new, down_new = to_lora_pair(
        u[:, :k] * root, root[:, None] * vh[:k], (up.shape[0], *down.shape[1:])
    )
    return up_new, down_new, scale * k, old_rank, k, math.sqrt(energy)


def resize_lora(
    state_dict: Mapping[str, torch.Tensor],
    new_rank: int | None = None,
    dynamic_method: str | None = None,
    dynamic_param: float | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    source: str = "the LoRA",
) -> ResizeResult:
    """Resize every module of a kohya LoRA / LoCon / DoRA state dict (see module docstring).

    ``dtype`` defaults to the input's. ``metadata`` is carried over with the rank, alpha and
    a comment updated. Raises ``ToolError`` for a rank of 0 or above the original, a bad
    method or parameter, or a LoRA type that has no rank to resize.
    """
    net_type = detect_network_type(state_dict, metadata)
    if net_type not in RESIZABLE:
        raise ToolError(
            f"resize: {source} is a {net_type!r} network; resizable types: {', '.join(RESIZABLE)}"
        )
    names = lora_module_names(state_dict)
    original = max(state_dict[kf.lora_keys(n)[0]].shape[0] for n in names)
    _check_method(dynamic_method, dynamic_param)
    cap = _check_rank(new_rank, dynamic_method, original, source)
    out_dtype = dtype or next(iter(state_dict.values())).dtype
    result = ResizeResult({}, {})
    for name in names:
        up, down, alpha, old, k, kept = _resize_module(
            state_dict, name, cap, dynamic_method, dynamic_param, device
        )
        down_key, up_key, alpha_key = kf.lora_keys(name)
        result.state_dict[down_key] = down.to("cpu", out_dtype).contiguous()
        result.state_dict[up_key] = up.to("cpu", out_dtype).contiguous()
        result.state_dict[alpha_key] = torch.tensor(alpha, dtype=out_dtype)
        result.ranks[name], result.fro_retained[name] = (old, k), kept
    for key, value in state_dict.items():  # dora_scale and anything else rides along
        result.state_dict.setdefault(key, value.clone())
    result.metadata = _resized_metadata(
        metadata or {}, new_rank, dynamic_method, dynamic_param, original
    )
    return result


def _resized_metadata(metadata, new_rank, method, param, original) -> dict[str, str]:
    meta = {k: v for k, v in metadata.items() if k not in (kf.HASH_KEY, "sshs_legacy_hash")}
    if method is None:
        try:
            scale = float(meta["ss_network_alpha"]) / float(meta["ss_network_dim"])
        except (KeyError, ValueError, ZeroDivisionError):
            scale = None
        meta["ss_network_dim"] = str(new_rank)
        if scale is not None:
            meta["ss_network_alpha"] = str(scale * new_rank)
        what = f"resized from rank {original} to {new_rank}"
    else:
        meta["ss_network_dim"] = meta["ss_network_alpha"] = "Dynamic"
        cap = new_rank if new_rank is not None else original
        what = f"dynamic resize from rank {original}: {method} {param}, max rank {cap}"
    comment = meta.get("ss_training_comment")
    meta["ss_training_comment"] = f"{comment}; {what}" if comment and comment != "None" else what
    return meta

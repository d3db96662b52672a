"""Extract a kohya LoRA from two models (base and fine-tuned) by truncated SVD.

For every layer a kohya LoRA adapts (see ``common.lora_targets``), the weight difference
``tuned - base`` (3x3 convs flattened to [out, in*3*3]) is factored as ``U S Vh``; the first
``dim`` (``conv_dim`` for 3x3 convs) singular triplets give ``lora_up = U S`` and
``lora_down = Vh``, with ``alpha`` = the module's rank so the file applies the delta at scale
1. The best rank-r approximation of the difference in the Frobenius norm is exactly this
(Eckart-Young), so a difference of rank <= dim is recovered to float precision (when
``clamp_quantile`` is 1.0).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from trainer.networks import kohya_format as kf
from trainer.networks.lora import KOHYA_NETWORK_MODULE
from trainer.networks.metadata import kohya_value
from trainer.tools.common import (
    ToolError,
    check_same_architecture,
    clamp_quantile_,
    component_state_dicts,
    flat,
    lora_targets,
    to_lora_pair,
    truncated_svd,
)

log = logging.getLogger(__name__)


def _check_args(dim: Any, conv_dim: Any, clamp_quantile: Any) -> None:
    problems = []
    for key, value in (("dim", dim), ("conv_dim", conv_dim)):
        if value is None and key == "conv_dim":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{key} = {value!r}; must be an integer >= 1")
    if not isinstance(clamp_quantile, int | float) or not 0 < clamp_quantile <= 1:
        problems.append(f"clamp_quantile = {clamp_quantile!r}; must be in (0, 1] (1 = no clamp)")
    if problems:
        raise ToolError("extract: " + "; ".join(problems))


def _difference(tuned: torch.Tensor, base: torch.Tensor, device) -> torch.Tensor:
    # On ``device`` in fp32, whatever devices / dtypes the two models are on.
    return tuned.to(device, torch.float32) - base.to(device, torch.float32)


def _changed_components(base, tuned, min_diff: float, device) -> list[str]:
    """Components whose largest weight difference exceeds ``min_diff`` (kohya skips the rest)."""
    changed = []
    for component in base:
        largest = max(
            (
                float(_difference(tuned[component][k], w, device).abs().max())
                for k, w in base[component].items()
                if w.is_floating_point() and w.numel()
            ),
            default=0.0,
        )
        if largest > min_diff:
            changed.append(component)
        else:
            log.info("extract: %s max |diff| %.3g <= min_diff: not extracted", component, largest)
    return changed


def extract_lora(
    base: Any,
    tuned: Any,
    dim: int,
    conv_dim: int | None = None,
    clamp_quantile: float = 0.99,
    *,
    min_diff: float = 0.01,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    base_name: str = "base model",
    tuned_name: str = "tuned model",
    family=None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Extract the LoRA that turns ``base`` into (approximately) ``tuned``.

    ``base`` / ``tuned``: ``SDComponents`` or mappings ``{"unet": ..., "text_encoder": ...}``
    of modules or state dicts (diffusers / transformers names; see ``component_state_dicts``).
    ``dim``: rank of Linear and 1x1-conv modules; ``conv_dim``: rank of 3x3 convs, which are
    only extracted when it is given (C3Lier / LoCon); ``alpha`` = rank. ``clamp_quantile``:
    entries of up/down beyond this quantile of their |values| are clipped (kohya's default
    0.99; 1.0 = exact). A component whose largest |difference| is <= ``min_diff`` (e.g. an
    untrained text encoder) is left out, as kohya does. SVDs run on ``device`` in fp32;
    tensors are returned on the CPU in ``dtype``.

    ``family`` (default SD 1.x): which text encoders there are and how the file names the
    modules (SDXL: ``text_encoder_2`` too, SGM UNet paths, ``lora_te1_`` / ``lora_te2_``).

    Returns (kohya state dict, ``ss_*`` metadata) ready for ``kohya_format.save_lora``.
    Raises ``ToolError`` for models of different architectures or bad arguments.
    """
    from trainer.families import DEFAULT_FAMILY, get_family

    family = family or get_family(DEFAULT_FAMILY)
    _check_args(dim, conv_dim, clamp_quantile)
    components = ("unet", *sorted(c for c in family.kohya_prefixes if c != "unet"))
    base_sd = component_state_dicts(base, base_name, components)
    tuned_sd = component_state_dicts(tuned, tuned_name, components)
    check_same_architecture(base_sd, tuned_sd, base_name, tuned_name)
    changed = _changed_components(base_sd, tuned_sd, min_diff, device)
    if not changed:
        raise ToolError(
            f"extract: {tuned_name} does not differ from {base_name} by more than "
            f"min_diff = {min_diff} anywhere; nothing to extract"
        )
    out: dict[str, torch.Tensor] = {}
    targets = lora_targets(base_sd, with_conv=conv_dim is not None, family=family)
    for target in targets.values():
        if target.component not in changed:
            continue
        weight = base_sd[target.component][target.weight_key]
        delta = _difference(tuned_sd[target.component][target.weight_key], weight, device)
        rank = conv_dim if target.kind == "conv3x3" else dim
        u, s, vh = truncated_svd(flat(delta), rank, device)
        up2d, down2d = u * s, vh
        clamp_quantile_([up2d, down2d], clamp_quantile)
        up, down = to_lora_pair(up2d, down2d, weight.shape)
        down_key, up_key, alpha_key = kf.lora_keys(target.kohya_name)
        out[down_key] = down.to("cpu", dtype).contiguous()
        out[up_key] = up.to("cpu", dtype).contiguous()
        out[alpha_key] = torch.tensor(float(down.shape[0]), dtype=dtype)
    log.info(
        "extract: %d modules (%s), dim %s, conv_dim %s", len(out) // 3, changed, dim, conv_dim
    )
    return out, extracted_metadata(
        dim, conv_dim, clamp_quantile, changed, family.base_model_version
    )


def extracted_metadata(
    dim: int,
    conv_dim: int | None,
    clamp_quantile: float,
    components: list[str],
    base_model_version: str = "sd_v1",
) -> dict[str, str]:
    """The ``ss_*`` metadata kohya writes for an extracted LoRA (no training keys)."""
    args = {} if conv_dim is None else {"conv_dim": str(conv_dim), "conv_alpha": str(conv_dim)}
    info = {
        "network_module": KOHYA_NETWORK_MODULE,
        "network_dim": dim,
        "network_alpha": float(dim),
        "network_args": args,
        "v2": False,
        "base_model_version": base_model_version,
        "training_comment": (
            f"extracted by lorasweep (SVD, dim={dim}, conv_dim={conv_dim}, "
            f"clamp_quantile={clamp_quantile}, components={json.dumps(components)})"
        ),
    }
    return {"ss_" + k: kohya_value(v) for k, v in info.items()}

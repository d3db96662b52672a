"""Merge LoRAs into a model's weights, or several LoRAs into one.

Into a model, each file's weight delta is added at its ratio: ``W += ratio * delta``. kohya
LoRA / LoCon files are merged with their closed form ``delta = up @ down * alpha / rank`` (3x3
convs through the flattened kernels); LyCORIS files (LoHa, LoKr, (IA)^3, DoRA) through
LyCORIS' own modules (``merge_to``), which rebuild each algorithm's delta. Merging at ratio w
gives the model that applying the file at strength w computes.

Into one LoRA (kohya LoRA / LoCon files only), either the ranks are concatenated, which is
exact (``sum_i w_i up_i down_i s_i`` = ``[w_1 s_1 up_1 | w_2 s_2 up_2] @ [down_1; down_2]``), or
the summed delta is re-factored by truncated SVD to a target rank (the best approximation of
that rank).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainer.errors import ModelLoadError
from trainer.networks import kohya_format as kf
from trainer.networks.detect import detect_network_type
from trainer.networks.lora import KOHYA_NETWORK_MODULE
from trainer.networks.metadata import kohya_value
from trainer.tools.common import (
    ToolError,
    flat,
    lora_delta,
    lora_module_names,
    to_lora_pair,
    truncated_svd,
)

_LORA_FAMILY = ("lora", "locon")
_LYCORIS = ("loha", "lokr", "ia3", "dora")


@dataclass(frozen=True)
class LoraInput:
    """One LoRA to merge: its tensors, its ratio, and a name (file path) for messages."""

    state_dict: Mapping[str, torch.Tensor]
    ratio: float
    name: str = "LoRA"


def _layers(unet: nn.Module, text_encoders: Mapping[str, nn.Module], family) -> dict:
    """Every Linear / Conv2d of the model by its kohya module name (the family's names)."""
    layers = {}
    for component, root in (("unet", unet), *text_encoders.items()):
        for path, module in root.named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                layers[family.kohya_module_name(component, path)] = module
    return layers


def _merge_kohya(lora: LoraInput, layers: Mapping[str, nn.Module]) -> int:
    names = lora_module_names(lora.state_dict)
    missing = [n for n in names if n not in layers]
    if missing:
        raise ModelLoadError(
            f"{lora.name}: {len(missing)} module(s) have no layer of that name in the model "
            f"(a LoRA for another architecture?): {', '.join(missing[:5])}"
        )
    with torch.no_grad():
        for name in names:
            weight = layers[name].weight
            delta = lora_delta(lora.state_dict, name).to(weight.device)
            if delta.numel() != weight.numel():
                raise ModelLoadError(
                    f"{lora.name}: module {name}: delta of shape {tuple(delta.shape)} does not "
                    f"fit the layer's weight {tuple(weight.shape)}"
                )
            merged = weight.float() + lora.ratio * delta.reshape(weight.shape)
            weight.copy_(merged.to(weight.dtype))
    return len(names)


def _merge_lycoris(lora: LoraInput, unet: nn.Module, text_encoders, family) -> int:
    from trainer.networks.lycoris_load import load_lycoris_state_dict

    network = load_lycoris_state_dict(
        lora.state_dict, unet, text_encoders, multiplier=lora.ratio, source=lora.name,
        family=family,
    )  # fmt: skip
    modules = network.unet_loras + network.text_encoder_loras
    with torch.no_grad():
        for module in modules:
            module.merge_to(lora.ratio)
    network.restore()  # the deltas are in the weights now: unhook the modules
    return len(modules)


def merge_into_model(
    unet: nn.Module,
    text_encoder: nn.Module | Mapping[str, nn.Module],
    loras: Sequence[LoraInput],
    family=None,
) -> dict[str, int]:
    """Add each LoRA's delta, times its ratio, to the weights of ``unet`` / the text encoder(s).

    ``text_encoder``: one module, or the family's text encoders by component name;
    ``family`` (default SD 1.x) names the layers as its files do (SDXL: SGM paths,
    ``lora_te1_`` / ``lora_te2_``). Any type that ``detect_network_type`` names can be merged
    (LyCORIS files through LyCORIS' modules). Returns {name: modules merged}.
    Raises ``ToolError`` for an unknown type, ``ModelLoadError`` for a LoRA whose modules do
    not fit the model.
    """
    from trainer.families import DEFAULT_FAMILY, get_family
    from trainer.networks.lora import text_encoder_map

    family = family or get_family(DEFAULT_FAMILY)
    text_encoders = text_encoder_map(text_encoder)
    layers = _layers(unet, text_encoders, family)
    merged = {}
    for lora in loras:
        net_type = detect_network_type(lora.state_dict)
        if net_type in _LORA_FAMILY:
            merged[lora.name] = _merge_kohya(lora, layers)
        elif net_type in _LYCORIS:
            merged[lora.name] = _merge_lycoris(lora, unet, text_encoders, family)
        else:
            raise ToolError(
                f"{lora.name}: cannot merge a network of type {net_type!r}; mergeable: "
                f"{', '.join(_LORA_FAMILY + _LYCORIS)}"
            )
    return merged


def _check_lora_family(loras: Sequence[LoraInput]) -> None:
    for lora in loras:
        net_type = detect_network_type(lora.state_dict)
        if net_type not in _LORA_FAMILY:
            raise ToolError(
                f"{lora.name} is a {net_type!r} network; only kohya LoRA / LoCon files "
                f"({', '.join(_LORA_FAMILY)}) can be merged into one LoRA (merge the others "
                "into a model instead)"
            )


def _concat_module(loras: Sequence[LoraInput], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    ups, downs = [], []
    for lora in loras:
        down_key, up_key, alpha_key = kf.lora_keys(name)
        if down_key not in lora.state_dict:
            continue
        down, up = lora.state_dict[down_key].float(), lora.state_dict[up_key].float()
        rank = down.shape[0]
        alpha = float(lora.state_dict.get(alpha_key, rank))
        ups.append(up * (lora.ratio * alpha / rank))
        downs.append(down)
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def _svd_module(
    loras: Sequence[LoraInput], name: str, rank: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    present = [lo for lo in loras if kf.lora_keys(name)[0] in lo.state_dict]
    delta = sum(lo.ratio * lora_delta(lo.state_dict, name) for lo in present)
    down_shape = present[0].state_dict[kf.lora_keys(name)[0]].shape
    up_shape = present[0].state_dict[kf.lora_keys(name)[1]].shape
    weight_shape = (up_shape[0], *down_shape[1:])
    u, s, vh = truncated_svd(delta, rank, device)
    return to_lora_pair(u * s, vh, weight_shape)


def merge_loras(
    loras: Sequence[LoraInput],
    new_rank: int | None = None,
    new_conv_rank: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Merge kohya LoRA / LoCon files into one LoRA: (state dict, ``ss_*`` metadata).

    ``new_rank`` None: ranks are concatenated (exact; each module's rank is the sum of its
    ranks in the inputs). Otherwise each module's summed delta is re-factored by SVD to
    ``new_rank`` (3x3 convs: ``new_conv_rank``, default ``new_rank``). ``alpha`` = rank.
    """
    if not loras:
        raise ToolError("merge: no LoRA given")
    for key, value in (("new_rank", new_rank), ("new_conv_rank", new_conv_rank)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ToolError(f"merge: {key} = {value!r}; must be an integer >= 1")
    if new_conv_rank is not None and new_rank is None:
        raise ToolError("merge: new_conv_rank needs new_rank (without it, ranks are concatenated)")
    _check_lora_family(loras)
    names = sorted({n for lo in loras for n in lora_module_names(lo.state_dict)})
    out: dict[str, torch.Tensor] = {}
    is_conv = False
    for name in names:
        if new_rank is None:
            up, down = _concat_module(loras, name)
        else:
            down_key = kf.lora_keys(name)[0]
            conv = any(
                lo.state_dict[down_key].ndim == 4 and lo.state_dict[down_key].shape[2:] != (1, 1)
                for lo in loras
                if down_key in lo.state_dict
            )
            rank = (new_conv_rank or new_rank) if conv else new_rank
            up, down = _svd_module(loras, name, rank, device)
        is_conv |= down.ndim == 4 and tuple(down.shape[2:]) != (1, 1)
        down_key, up_key, alpha_key = kf.lora_keys(name)
        out[down_key] = down.to("cpu", dtype).contiguous()
        out[up_key] = up.to("cpu", dtype).contiguous()
        out[alpha_key] = torch.tensor(float(down.shape[0]), dtype=dtype)
    return out, _merged_metadata(loras, out, new_rank, new_conv_rank, is_conv)


def _merged_metadata(loras, out, new_rank, new_conv_rank, is_conv) -> dict[str, str]:
    ranks = [flat(v).shape[0] for k, v in out.items() if k.endswith(kf.DOWN_SUFFIX)]
    dim = new_rank if new_rank is not None else max(ranks)
    args = {}
    if is_conv:
        conv = new_conv_rank or dim
        args = {"conv_dim": str(conv), "conv_alpha": str(conv)}
    sources = [{"name": lo.name, "ratio": lo.ratio} for lo in loras]
    mode = "concatenated ranks" if new_rank is None else f"SVD to rank {new_rank}"
    info = {
        "network_module": KOHYA_NETWORK_MODULE,
        "network_dim": dim,
        "network_alpha": float(dim),
        "network_args": args,
        "v2": False,
        "base_model_version": "sd_v1",
        "training_comment": f"merged by lorasweep ({mode}) from {json.dumps(sources)}",
    }
    return {"ss_" + k: kohya_value(v) for k, v in info.items()}

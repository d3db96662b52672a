"""Black Forest Labs' FLUX.1 transformer layout (``flux1-dev.safetensors``), from diffusers'.

BFL fuses what diffusers keeps apart: ``double_blocks.N.img_attn.qkv`` is diffusers'
``transformer_blocks.N.attn.to_q`` / ``to_k`` / ``to_v`` stacked, ``single_blocks.N.linear1``
is ``to_q`` / ``to_k`` / ``to_v`` / ``proj_mlp`` stacked; the final modulation's halves are
(shift, scale) in BFL's order and (scale, shift) in diffusers'. diffusers reads this layout with
``FluxTransformer2DModel.from_single_file`` (``convert_flux_transformer_checkpoint_to_
diffusers``); :func:`transformer_to_bfl` writes it, so that the two round-trip.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# diffusers' module path inside a block -> (BFL's module path, the part of a fused BFL module
# it is, or None). Linear layers (what LoRA adapts) and the RMSNorm scales.
DOUBLE = {
    "norm1.linear": ("img_mod.lin", None),
    "norm1_context.linear": ("txt_mod.lin", None),
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
}
SINGLE = {
    "norm.linear": ("modulation.lin", None),
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
}
_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_OUTSIDE = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_BFL_BLOCKS = {"transformer_blocks": "double_blocks", "single_transformer_blocks": "single_blocks"}


def bfl_module(module_path: str) -> tuple[str, int | None]:
    """(BFL path, part) of a Linear layer of a diffusers double / single block:
    ``transformer_blocks.0.attn.to_k`` -> (``double_blocks.0.img_attn.qkv``, 1)."""
    match = BLOCK.match(module_path)
    table = {"transformer_blocks": DOUBLE, "single_transformer_blocks": SINGLE}
    inner = table[match.group(1)].get(match.group(3)) if match else None
    if inner is None:
        raise ValueError(f"{module_path!r} is not a Linear layer of a Flux double / single block")
    bfl, part = inner
    return f"{_BFL_BLOCKS[match.group(1)]}.{match.group(2)}.{bfl}", part


def _bfl_key(key: str) -> tuple[str, int | None]:
    """(BFL key, part) of one diffusers transformer state-dict key."""
    module, _, leaf = key.rpartition(".")
    if module in _OUTSIDE:
        return f"{_OUTSIDE[module]}.{leaf}", None
    match = BLOCK.match(module)
    if match is None:
        raise ValueError(f"{key}: not a FLUX.1 transformer key")
    norms = _DOUBLE_NORMS if match.group(1) == "transformer_blocks" else _SINGLE_NORMS
    if match.group(3) in norms:
        return (
            f"{_BFL_BLOCKS[match.group(1)]}.{match.group(2)}.{norms[match.group(3)]}.scale",
            None,
        )
    bfl, part = bfl_module(module)
    return f"{bfl}.{leaf}", part


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_to_bfl(
    state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict in BFL's layout (fused parts stacked in
    BFL's order, the final modulation as (shift, scale))."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu", dtype or tensor.dtype)
        bfl, part = _bfl_key(key)
        if bfl.startswith("final_layer.adaLN_modulation"):
            tensor = _swap_halves(tensor)
        if part is None:
            out[bfl] = tensor
        else:
            parts.setdefault(bfl, {})[part] = tensor
    for bfl, pieces in parts.items():
        out[bfl] = torch.cat([pieces[i] for i in sorted(pieces)], dim=0)
    return out


def save_bfl_transformer(transformer, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``transformer`` as BFL's single-file transformer (``.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = transformer_to_bfl(transformer.state_dict(), dtype)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path

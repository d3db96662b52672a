"""LoRA modules that are slices of one fused Linear in the file's naming (Flux's BFL layout).

BFL's FLUX.1 fuses layers that diffusers keeps apart: ``double_blocks.N.img_attn.qkv`` is
diffusers' ``to_q`` / ``to_k`` / ``to_v``, ``single_blocks.N.linear1`` is ``to_q`` / ``to_k`` /
``to_v`` / ``proj_mlp``. We train one adapter per diffusers layer, named
``<fused name>_part<i>`` (``trainer.families.flux``); the file holds the fused module, as
kohya's ``networks/lora_flux.py`` writes a ``split_qkv`` network: the parts' downs stacked
(``[n r, in]``) and their ups block-diagonal (``[sum out_i, n r]``), so that the fused delta
is exactly the parts' deltas stacked. Unlike kohya, alpha is multiplied by ``n``, so the
file's ``alpha / rank`` is the parts' ``alpha / r`` and every loader (diffusers, ComfyUI)
computes the delta training computed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from trainer.errors import ModelLoadError
from trainer.networks.kohya_format import ALPHA_SUFFIX, DOWN_SUFFIX, UP_SUFFIX

PART = re.compile(r"^(?P<base>.+)_part(?P<index>\d+)$")


def fused_name(name: str) -> tuple[str, int] | None:
    """(fused module name, part index) of a part's name, or None for a whole module."""
    match = PART.match(name)
    return (match.group("base"), int(match.group("index"))) if match else None


def fuse_parts(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<name>_part<i>`` modules merged into ``<name>`` (stacked downs, block-diagonal ups,
    alpha times the number of parts); other keys unchanged, in their order."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, str]] = {}
    for key in state_dict:
        module = key.split(".")[0]
        parsed = fused_name(module)
        if parsed is None:
            out[key] = state_dict[key]
        else:
            groups.setdefault(parsed[0], {})[parsed[1]] = module
    for base, parts in groups.items():
        names = [parts[i] for i in sorted(parts)]
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"{base}: parts {sorted(parts)} are not 0..{len(parts) - 1}")
        downs = [state_dict[n + DOWN_SUFFIX] for n in names]
        ups = [state_dict[n + UP_SUFFIX] for n in names]
        alphas = {float(state_dict[n + ALPHA_SUFFIX]) for n in names}
        if len(alphas) != 1 or len({d.shape[0] for d in downs}) != 1:
            raise ValueError(f"{base}: its parts differ in rank or alpha")
        out[base + DOWN_SUFFIX] = torch.cat(downs, dim=0)
        out[base + UP_SUFFIX] = torch.block_diag(*ups)
        alpha = state_dict[names[0] + ALPHA_SUFFIX]
        out[base + ALPHA_SUFFIX] = alpha * len(names)
    return out


def split_parts(
    state_dict: Mapping[str, torch.Tensor], parts: Mapping[str, Sequence[int]], source: str
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`fuse_parts` for a network whose fused modules ``parts`` lists
    (fused name -> each part's output size): a block-diagonal fused module becomes its parts
    again. A fused module that is not block-diagonal (kohya's own rank-r qkv) cannot be a set
    of rank-r parts and is refused, naming it."""
    out = {k: v for k, v in state_dict.items() if k.split(".")[0] not in parts}
    for base, sizes in parts.items():
        if base + DOWN_SUFFIX not in state_dict:
            continue  # the caller's key check names what is missing
        down, up = state_dict[base + DOWN_SUFFIX], state_dict[base + UP_SUFFIX]
        n = len(sizes)
        rank = down.shape[0] // n
        rows = torch.split(up, list(sizes), dim=0)
        blocks = [r[:, i * rank : (i + 1) * rank] for i, r in enumerate(rows)]
        if down.shape[0] % n or not torch.equal(torch.block_diag(*blocks), up):
            raise ModelLoadError(
                f"{source}: {base} is not {n} block-diagonal parts (a fused LoRA of rank "
                f"{down.shape[0]}); this network trains each of its {n} parts on its own"
            )
        alpha = state_dict[base + ALPHA_SUFFIX] / n
        for i, block in enumerate(blocks):
            name = f"{base}_part{i}"
            out[name + DOWN_SUFFIX] = down[i * rank : (i + 1) * rank]
            out[name + UP_SUFFIX] = block
            out[name + ALPHA_SUFFIX] = alpha
    return out

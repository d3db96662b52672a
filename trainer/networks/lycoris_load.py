"""Load any LyCORIS / kohya LoRA file onto an SD 1.x UNet and text encoder for evaluation.

This is LyCORIS' own loader (``lycoris.kohya.create_network_from_weights``, the one kohya's
scripts use for ``lycoris.kohya`` files): it builds each module from its keys, whatever the
algorithm, so files written by other trainers load too. One gap is filled here: lycoris-lora
4.1.3 cannot rebuild (IA)^3 modules from a state dict (``IA3Module.make_module_from_state_dict``
takes the scaling vector but is handed ``on_input`` too, and would drop it), so (IA)^3 modules
are built directly from their two keys. And the loader first builds a throwaway network from
LyCORIS' class-level preset, whose default targets both the ``TimestepEmbedding`` class and the
``time_embedding.linear_1`` name, so on an SD 1.x UNet it fails ("duplicated lora name"); an
empty preset is applied first.

DoRA files whose magnitude is stored per input column (``dora_scale`` of shape
``(1, in[, 1, 1])``, what ``lycoris_net`` writes, the layout ComfyUI and WebUI renormalise by the
merged weight) are built here too: LyCORIS' loader only rebuilds the per-output layout and
fails to copy the other. Per-output files (other trainers' default) still go to LyCORIS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights
from lycoris.modules.ia3 import IA3Module
from lycoris.modules.locon import LoConModule
from torch import nn

from trainer.errors import ModelLoadError
from trainer.networks import kohya_format as kf
from trainer.networks.detect import check_network_type
from trainer.networks.lycoris_fixes import apply_fixes
from trainer.networks.lycoris_net import EMPTY_PRESET, text_roots, unet_name_map

# lora_unet_, and lora_te_ (SD 1.x) or lora_te1_ / lora_te2_ (SDXL); lycoris_ (Flux: named by
# family.lycoris_module_name, listed so that an unmatched one is reported, not skipped).
_PREFIXES = (kf.UNET_PREFIX + "_", kf.TEXT_ENCODER_PREFIX, "lycoris_")


def _module_names(state_dict: Mapping[str, torch.Tensor]) -> set[str]:
    return {k.split(".", 1)[0] for k in state_dict if "." in k and k.startswith(_PREFIXES)}


def _ia3_modules(
    state_dict: Mapping[str, torch.Tensor],
    names: set[str],
    layers: Mapping[str, nn.Module],
    multiplier: float,
) -> list[IA3Module]:
    modules = []
    with torch.no_grad():
        for name in sorted(names):
            on_input = bool(state_dict[f"{name}.on_input"].item())
            module = IA3Module(name, layers[name], multiplier, train_on_input=on_input)
            module.weight.copy_(state_dict[f"{name}.weight"].reshape(module.weight.shape))
            modules.append(module)
    return modules


def _dora_on_input(state_dict: Mapping[str, torch.Tensor], name: str) -> bool:
    """Whether module ``name`` is DoRA with its magnitude per input column."""
    scale = state_dict.get(f"{name}.dora_scale")
    down = state_dict.get(f"{name}.lora_down.weight")
    if scale is None or down is None or scale.dim() < 2:
        return False
    return scale.shape[0] == 1 and scale.shape[1] == down.shape[1] and down.shape[1] != 1


def _dora_input_modules(
    state_dict: Mapping[str, torch.Tensor],
    names: set[str],
    layers: Mapping[str, nn.Module],
    multiplier: float,
) -> list[LoConModule]:
    modules = []
    with torch.no_grad():
        for name in sorted(names):
            down = state_dict[f"{name}.lora_down.weight"]
            mid = state_dict.get(f"{name}.lora_mid.weight")
            alpha = state_dict.get(f"{name}.alpha")
            module = LoConModule(
                name,
                layers[name],
                multiplier,
                down.shape[0],
                float(alpha) if alpha is not None else down.shape[0],
                use_tucker=mid is not None,
                weight_decompose=True,
                wd_on_out=False,
            )
            module.lora_up.weight.copy_(state_dict[f"{name}.lora_up.weight"])
            module.lora_down.weight.copy_(down)
            if mid is not None:
                module.lora_mid.weight.copy_(mid)
            module.dora_scale.copy_(state_dict[f"{name}.dora_scale"])
            modules.append(module)
    return modules


def _layers_by_kohya_name(unet: nn.Module, te_root) -> dict[str, nn.Module]:
    """Every module by LyCORIS' name for it (``te_root``: one root, or a list numbered as
    LyCORIS numbers them: ``lora_te1_``, ``lora_te2_``)."""
    roots = [(kf.UNET_PREFIX, unet)]
    if isinstance(te_root, list):
        roots += [(f"{kf.TEXT_ENCODER_PREFIX}{i + 1}", r) for i, r in enumerate(te_root)]
    else:
        roots.append((kf.TEXT_ENCODER_PREFIX, te_root))
    layers = {}
    for prefix, root in roots:
        for path, module in root.named_modules():
            if path:
                layers[f"{prefix}_{path.replace('.', '_')}"] = module
    return layers


def _internal_names(state_dict: Mapping[str, torch.Tensor], unet: nn.Module, family):
    """``state_dict`` with the family's UNet names (SDXL: SGM paths) turned into LyCORIS' own
    (the diffusers paths), which its loader matches against the UNet."""
    if family is None:
        return dict(state_dict)
    back = {v: k for k, v in unet_name_map(unet, family).items()}
    out = {}
    for key, value in state_dict.items():
        name, dot, rest = key.partition(".")
        out[back.get(name, name) + dot + rest] = value
    return out


def load_lycoris_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    unet: nn.Module,
    text_encoder: nn.Module | Mapping[str, nn.Module],
    multiplier: float = 1.0,
    source: str = "LoRA state dict",
    expected_type: str | None = None,
    family=None,
) -> LycorisNetworkKohya:
    """Hook the modules of ``state_dict`` into ``unet`` / the text encoder(s) at
    ``multiplier``.

    Any type loads (kohya LoRA / LoCon too). ``text_encoder``: one module, or the family's
    text encoders by name; ``family`` (default: LyCORIS' own names, SD 1.x's) names the UNet
    modules in the file (SDXL: SGM paths). Returns LyCORIS' network: ``set_multiplier(x)``
    changes the strength, ``restore()`` unhooks it. ``ModelLoadError`` if a module of the file
    finds no layer, or if ``expected_type`` is given and the file holds another type.
    """
    from trainer.networks.lora import text_encoder_map

    if expected_type is not None:
        check_network_type(state_dict, expected_type, source)
    state_dict = _internal_names(state_dict, unet, family)
    root = text_roots(text_encoder_map(text_encoder), family)
    layers = _layers_by_kohya_name(unet, root)
    names = _module_names(state_dict)
    unmatched = sorted(names - set(layers))
    if unmatched:
        raise ModelLoadError(
            f"{source}: {len(unmatched)} module(s) have no layer of that name in this model "
            f"(a LoRA for another architecture?): {', '.join(unmatched[:5])}"
        )
    ia3 = {n for n in names if f"{n}.on_input" in state_dict}
    dora_in = {n for n in names if _dora_on_input(state_dict, n)}
    own = ia3 | dora_in
    rest = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in own}
    LycorisNetworkKohya.apply_preset(EMPTY_PRESET)
    network, _ = create_network_from_weights(multiplier, None, None, root, unet, weights_sd=rest)
    built = _ia3_modules(state_dict, ia3, layers, multiplier)
    built += _dora_input_modules(state_dict, dora_in, layers, multiplier)
    for module in built:
        if module.lora_name.startswith(kf.UNET_PREFIX + "_"):
            network.unet_loras.append(module)
        else:
            network.text_encoder_loras.append(module)
    loaded = len(network.unet_loras) + len(network.text_encoder_loras)
    if loaded != len(names):
        raise ModelLoadError(
            f"{source}: LyCORIS recognised {loaded} of its {len(names)} modules "
            "(unsupported algorithm keys?)"
        )
    apply_fixes(network.unet_loras + network.text_encoder_loras)  # see lycoris_fixes
    network.apply_to(root, unet, apply_text_encoder=True, apply_unet=True)
    network.to(next(unet.parameters()).device)
    return network


def load_lycoris_file(
    path: str | os.PathLike,
    unet: nn.Module,
    text_encoder: nn.Module,
    multiplier: float = 1.0,
    expected_type: str | None = None,
) -> LycorisNetworkKohya:
    """``load_lycoris_state_dict`` for a ``.safetensors`` file (errors name the file)."""
    state_dict, _ = kf.read_lora(path)
    return load_lycoris_state_dict(
        state_dict, unet, text_encoder, multiplier, str(path), expected_type
    )

"""Which network type a LoRA state dict holds, told from its key suffixes (and metadata).

Every format WebUI / ComfyUI read names a module ``lora_unet_<path>`` / ``lora_te_<path>``
and its tensors by suffix; the suffixes tell the algorithm:

=========  =================================================================
type       suffixes
=========  =================================================================
lora       ``lora_down.weight``, ``lora_up.weight``, ``alpha`` (no 3x3 convs)
locon      the same, with 3x3-conv modules (``lora_down`` of kernel > 1)
dora       ``lora_down.weight``, ``lora_up.weight``, ``alpha``, ``dora_scale``
loha       ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``
lokr       ``lokr_w1`` or ``lokr_w1_a/_b``, ``lokr_w2`` or ``lokr_w2_a/_b``, ``alpha``
ia3        ``weight``, ``on_input``
full       ``diff`` (and ``diff_b``)
=========  =================================================================

``lora`` and ``locon`` are one family (kohya's ``networks.lora``; a C3Lier network that only
trains the text encoder has no conv keys), so they load into each other's networks and only
the key check tells them apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from trainer.errors import ModelLoadError

NETWORK_TYPES = ("lora", "locon", "loha", "lokr", "ia3", "dora")
_FAMILY = {"lora": "lora", "locon": "lora"}

# Checked in this order: dora before lora (a DoRA module also has lora_down/lora_up).
_SUFFIX_TYPES = (
    (".hada_w1_a", "loha"),
    (".lokr_w1", "lokr"),
    (".lokr_w1_a", "lokr"),
    (".dora_scale", "dora"),
    (".lora_down.weight", "lora"),
    (".on_input", "ia3"),
    (".diff", "full"),
)


def _types_in(keys: list[str]) -> set[str]:
    found = set()
    for key in keys:
        for suffix, net_type in _SUFFIX_TYPES:
            if key.endswith(suffix):
                found.add(net_type)
                break
    if "dora" in found:
        # DoRA modules carry lora_down/up too; LoHa/LoKr with weight decomposition carry
        # dora_scale beside their own keys and are LoHa/LoKr.
        found.discard("lora")
        if found & {"loha", "lokr"}:
            found.discard("dora")
    return found


def _has_3x3_conv(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(
        key.endswith(".lora_down.weight") and value.ndim == 4 and tuple(value.shape[2:]) != (1, 1)
        for key, value in state_dict.items()
    )


def _type_from_metadata(metadata: Mapping[str, str]) -> str | None:
    module = metadata.get("ss_network_module", "")
    if module in ("networks.lora", "networks.lora_flux"):
        return "lora"
    if module.startswith("lycoris"):
        try:
            args = json.loads(metadata.get("ss_network_args") or "{}")
        except ValueError:
            return None
        algo = str(args.get("algo", "lora")).lower()
        if algo in ("lora", "locon") and str(args.get("dora_wd", "")).lower() == "true":
            return "dora"
        return algo
    return None


def detect_network_type(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> str:
    """The network type of ``state_dict``: one of ``NETWORK_TYPES``, ``full``, ``mixed`` or
    ``unknown``. Keys decide; the metadata only answers when no key suffix is recognised."""
    found = _types_in(list(state_dict))
    if len(found) > 1:
        return "mixed"
    if found == {"lora"}:
        return "locon" if _has_3x3_conv(state_dict) else "lora"
    if found:
        return found.pop()
    return _type_from_metadata(metadata or {}) or "unknown"


def same_family(found: str, expected: str) -> bool:
    """Whether a file of type ``found`` may be loaded into a network of type ``expected``."""
    return _FAMILY.get(found, found) == _FAMILY.get(expected, expected)


def check_network_type(
    state_dict: Mapping[str, torch.Tensor],
    expected: str,
    source: str,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Return the detected type; raise ``ModelLoadError`` if it is not ``expected``'s family."""
    found = detect_network_type(state_dict, metadata)
    if not same_family(found, expected):
        raise ModelLoadError(
            f"{source} holds a {found!r} network (told from its keys, e.g. "
            f"{_example_key(state_dict)!r}) but it is being loaded as network type "
            f"{expected!r}; load it with network.type={found} (allowed types: "
            f"{', '.join(NETWORK_TYPES)})"
        )
    return found


def _example_key(state_dict: Mapping[str, torch.Tensor]) -> str:
    for key in sorted(state_dict):
        if not key.endswith(".alpha"):
            return key
    return next(iter(state_dict), "<empty>")


def key_problems(got: set[str], expected: set[str], show: int = 10) -> list[str]:
    """What differs between a file's keys and the network's, for a load error."""
    problems = []
    for label, keys in (("unexpected", got - expected), ("missing", expected - got)):
        if keys:
            names = sorted(keys)
            more = f" (+{len(names) - show} more)" if len(names) > show else ""
            problems.append(f"{len(names)} {label} key(s): {', '.join(names[:show])}{more}")
    return problems

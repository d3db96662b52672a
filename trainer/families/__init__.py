"""Model families by name: ``get_family(model.family)``.

The registry maps each allowed ``model.family`` value to the module and class implementing
:class:`~trainer.families.base.ModelFamily`; the module is imported on first use, so checking
a config's ``model.family`` needs no ML library. A new family is one entry here, its module,
and its ``conf/model/*.yaml`` files.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from trainer.errors import ConfigError

if TYPE_CHECKING:
    from trainer.families.base import ModelFamily

# model.family value -> "module:Class"
_REGISTRY = {
    "sd15": "trainer.families.sd15:SD15Family",
    "sdxl": "trainer.families.sdxl:SDXLFamily",
    "flux": "trainer.families.flux:FluxFamily",
}
FAMILY_NAMES: tuple[str, ...] = tuple(_REGISTRY)
DEFAULT_FAMILY = "sd15"

# What a family does not support yet, as config key -> allowed values (a key not listed: any).
# Kept here, beside the registry, so that a config is checked before any model library loads.
_LIMITS: dict[str, dict[str, tuple]] = {
    # fp8 base weights (train.fp8_base) are implemented for Flux's transformer only.
    "sd15": {"train.fp8_base": (False,)},
    "sdxl": {
        "train.fp8_base": (False,),
        # SDXL trains LoRA / LoCon, DreamBooth (SGM checkpoints) and textual inversion.
        "train.mode": ("lora", "dreambooth", "textual_inversion"),
        # SDXL embeddings hold one tensor per encoder (clip_l, clip_g): .safetensors only.
        "train.embedding_format": ("safetensors",),
        # SDXL conditions on the penultimate layer of both encoders; kohya ignores clip_skip.
        "model.clip_skip": (1,),
        # Pivotal tuning and continued textual inversion read SD 1.x embeddings.
        "train.init_embedding": (None,),
    },
    "flux": {
        # Flux trains LoRA networks only so far (no DreamBooth or textual inversion): kohya's
        # LoRA, and LyCORIS' LoKr / LoHa / DoRA on the diffusers layers (families.flux,
        # lycoris_module_name); no LoCon (the blocks hold no convs) and no (IA)^3 preset.
        "train.mode": ("lora",),
        "network.type": ("lora", "lokr", "loha", "dora"),
        # Flux conditions on CLIP-L's pooled output and T5's last states: no clip skip.
        "model.clip_skip": (1,),
        # kohya's Flux trainer draws plain Gaussian noise (no offset) and has no min-SNR (the
        # flow objective has no DDPM SNR); refused rather than silently ignored.
        "train.noise_offset": (0, 0.0, None),
        "train.min_snr_gamma": (None,),
        # Flow matching predicts the velocity; DDPM prediction types do not apply.
        "model.prediction_type": ("epsilon",),
        "train.init_embedding": (None,),
        # Flow matching samples with its own Euler sampler (the sweeper checks eval's keys).
        "eval.sampler": ("euler",),
    },
}


def family_limit_problems(name: object, values: dict[str, object]) -> list[str]:
    """Problems of config ``values`` (key -> value) that family ``name`` does not support."""
    limits = _LIMITS.get(name, {}) if isinstance(name, str) else {}
    return [
        f"{key}: {values[key]!r} is not allowed for model.family {name}; allowed: "
        + ", ".join(map(str, allowed))
        for key, allowed in limits.items()
        if key in values and values[key] not in allowed
    ]


def family_problems(name: object, key: str = "model.family") -> list[str]:
    """The problem with ``name`` as a family (empty when it is allowed), for up-front checks."""
    if isinstance(name, str) and name in _REGISTRY:
        return []
    return [f"{key}: {name!r} is not allowed; allowed: {', '.join(FAMILY_NAMES)}"]


def get_family(name: str) -> ModelFamily:
    """The family ``model.family = name`` selects; a ``ConfigError`` naming the key, the value
    and the allowed names otherwise. One instance per family and process."""
    problems = family_problems(name)
    if problems:
        raise ConfigError(problems)
    return _instance(name)


@cache
def _instance(name: str) -> ModelFamily:
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def family_of(components) -> ModelFamily:
    """The family of loaded components (their ``family`` attribute, set by its ``load``)."""
    return get_family(getattr(components, "family", DEFAULT_FAMILY))

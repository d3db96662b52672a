"""kohya's ``ss_*`` training metadata, as stored in a LoRA file's safetensors header.

Tools read these keys (A1111/Forge's LoRA browser, civitai, kohya's own scripts): the base
model version, the rank and alpha, the learning rates, the tag frequencies of the data set.
Keys are kohya's names; values are strings written the way kohya writes them: ``str()`` for
numbers, tuples and ``None`` (``"None"``), ``"True"`` / ``"False"`` for booleans, JSON for dicts
and lists (``ss_network_args``, ``ss_tag_frequency``, ``ss_dataset_dirs``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PREFIX = "ss_"

# What every file must say about how it was trained; without one, the call is a bug.
REQUIRED_KEYS: tuple[str, ...] = (
    "network_module",
    "network_dim",
    "network_alpha",
    "network_args",
    "base_model_version",
    "learning_rate",
    "unet_lr",
    "text_encoder_lr",
    "optimizer",
    "lr_scheduler",
    "num_epochs",
    "epoch",
    "steps",
    "max_train_steps",
    "resolution",
    "clip_skip",
    "seed",
    "min_snr_gamma",
    "noise_offset",
    "tag_frequency",
    "dataset_dirs",
    "session_id",
    "training_started_at",
    "training_finished_at",
)

# Filled in when the caller does not say otherwise: SD 1.x only, and kohya's LoRA module
# (both LierLa and C3Lier are ``networks.lora``).
DEFAULTS: Mapping[str, Any] = {"v2": False, "network_module": "networks.lora"}


def kohya_value(value: Any) -> str:
    """One metadata value as kohya writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return json.dumps(dict(value), ensure_ascii=False)
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # numbers, bools ("True"), None ("None"), tuples ("(512, 512)")


def kohya_metadata(info: Mapping[str, Any]) -> dict[str, str]:
    """``ss_``-prefixed, all-string metadata from ``info`` (kohya's names without ``ss_``).

    ``info`` must hold every key of ``REQUIRED_KEYS`` except those in ``DEFAULTS``; extra keys
    (``output_name``, ``training_comment``, ...) are written too.
    """
    prefixed = sorted(k for k in info if k.startswith(PREFIX))
    if prefixed:
        raise ValueError(f"metadata keys must not carry the '{PREFIX}' prefix: {prefixed}")
    merged = {**DEFAULTS, **info}
    missing = [k for k in REQUIRED_KEYS if k not in merged]
    if missing:
        raise ValueError(f"kohya metadata is missing required key(s): {', '.join(missing)}")
    return {PREFIX + k: kohya_value(v) for k, v in merged.items()}


# Stability AI's ModelSpec (as kohya's library/sai_model_spec.py writes it for LoRA files).
MODELSPEC_VERSION = "1.0.1"
MODELSPEC_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
_MODELSPEC_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v"}
# Architectures kohya credits to their own code, with no prediction type (flow matching):
# library/sai_model_spec.py IMPL_FLUX, and "Flux models don't use prediction_type".
_FLOW_IMPLEMENTATIONS = {"flux-1-dev": "https://github.com/black-forest-labs/flux"}


def modelspec_metadata(
    architecture: str, title: str, resolution: tuple[int, int], prediction_type: str, date: str
) -> dict[str, str]:
    """The ``modelspec.*`` keys of a LoRA file for a base model of ``architecture`` (e.g.
    ``stable-diffusion-xl-v1-base``): the file's architecture is ``<architecture>/lora``, and
    SDXL LoRAs name Stability's SGM code as their implementation, as kohya does.
    ``resolution``: (width, height); ``date``: ISO 8601. Flux LoRAs name BFL's code and
    carry no prediction type, as kohya writes them."""
    flow = architecture in _FLOW_IMPLEMENTATIONS
    keys = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": _FLOW_IMPLEMENTATIONS.get(
            architecture, MODELSPEC_IMPLEMENTATION
        ),
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": date,
    }
    if not flow:
        keys["modelspec.prediction_type"] = _MODELSPEC_PREDICTION[prediction_type]
    return keys

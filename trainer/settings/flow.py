"""The flow-matching keys of a ``model`` group (``model.family: flux``), read without the model
libraries.

Defaults are the settings kohya's sd-scripts recommends for FLUX.1 LoRA training
(``docs/flux_train_network.md``, "Recommended Settings": ``--timestep_sampling shift
--discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0``), not its
argparse defaults (``sigma``, ``sigma_scaled``, ``3.5``), which the same guide advises against.
The prediction is always used raw (the ``noise - latents`` velocity, as x-flux and diffusers'
``train_dreambooth_lora_flux.py`` train it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.settings.read import ABSENT, value

TIMESTEP_SAMPLINGS = ("uniform", "sigmoid", "logit_normal", "shift", "flux_shift")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowSettings:
    """How a flow-matching family draws its training sigmas and weights its loss."""

    #: uniform: sigma ~ U(0, 1). sigmoid: sigmoid(sigmoid_scale * N(0, 1)) (x-flux).
    #: logit_normal: sigmoid(N(logit_mean, logit_std)) (SD3's rf/lognorm). shift: the sigmoid
    #: draw shifted by discrete_flow_shift. flux_shift: shifted by the image's size as FLUX.1-dev
    #: samples (mu from 0.5 at 256 packed tokens to 1.15 at 4096).
    timestep_sampling: str = "shift"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.1582
    logit_mean: float = 0.0
    logit_std: float = 1.0
    #: The distilled guidance input of FLUX.1-dev (ignored by models without one).
    guidance_scale: float = 1.0
    #: Per-sample loss weights by sigma (SD3's schemes); none = plain MSE.
    loss_weighting: str = "none"
    #: T5 tokens per prompt (kohya: 512 for dev, 256 for schnell).
    t5_max_token_length: int = 512


_FLOATS = ("sigmoid_scale", "discrete_flow_shift", "logit_mean", "logit_std", "guidance_scale")


def read_flow_settings(model_cfg: Any) -> tuple[FlowSettings, list[str]]:
    """The flow keys of ``model_cfg`` (defaults for absent ones) and their problems."""
    got = {}
    for name, field in FlowSettings.__dataclass_fields__.items():
        raw = value(model_cfg, name)
        got[name] = field.default if raw is ABSENT or raw is None else raw
    problems = []
    for key, allowed in (
        ("timestep_sampling", TIMESTEP_SAMPLINGS),
        ("loss_weighting", LOSS_WEIGHTINGS),
    ):
        if got[key] not in allowed:
            problems.append(
                f"model.{key}: {got[key]!r} is not allowed; allowed: {', '.join(allowed)}"
            )
    for key in _FLOATS:
        if isinstance(got[key], bool) or not isinstance(got[key], int | float):
            problems.append(f"model.{key}: {got[key]!r} is not allowed; allowed: a number")
    for key in ("sigmoid_scale", "discrete_flow_shift", "logit_std"):
        if key not in " ".join(problems) and got[key] <= 0:
            problems.append(f"model.{key}: {got[key]!r} is not allowed; allowed: a number > 0")
    length = got["t5_max_token_length"]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        problems.append(
            f"model.t5_max_token_length: {length!r} is not allowed; allowed: an int >= 1"
        )
    if problems:
        return FlowSettings(), problems
    return FlowSettings(**{k: float(v) if k in _FLOATS else v for k, v in got.items()}), []


def kohya_flow_metadata(flow: FlowSettings) -> dict:
    """The ``ss_*`` keys kohya's ``flux_train_network.py`` (``update_metadata``) writes, without
    the prefix; ``model_prediction_type`` is always raw here."""
    return {
        "model_type": "flux",
        "apply_t5_attn_mask": False,
        "weighting_scheme": flow.loss_weighting,
        "logit_mean": flow.logit_mean,
        "logit_std": flow.logit_std,
        "guidance_scale": flow.guidance_scale,
        "timestep_sampling": flow.timestep_sampling,
        "sigmoid_scale": flow.sigmoid_scale,
        "model_prediction_type": "raw",
        "discrete_flow_shift": flow.discrete_flow_shift,
    }

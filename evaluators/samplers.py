"""The samplers users pick in WebUI, as diffusers schedulers built from the model's own config.

Each scheduler is built with ``from_config`` on the base model's noise schedule (betas,
number of training steps, prediction type), so a v-prediction model samples as one.

Flow-matching models (Flux) have one sampler: ``euler`` is diffusers'
``FlowMatchEulerDiscreteScheduler`` on the model's own shift settings (FLUX.1-dev: shift by the
image's token count, ``use_dynamic_shifting``), as ``FluxPipeline`` and ComfyUI's ``euler``
sample it; the DDPM samplers are refused.
"""

from __future__ import annotations

import importlib.util

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

from trainer.errors import BackendMissingError, ConfigError

# name -> (scheduler class, options that make it the sampler users know by that name)
_SAMPLERS = {
    "ddim": (DDIMScheduler, {"set_alpha_to_one": False, "clip_sample": False}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # PLMS, as SD's pipelines run it
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}
SAMPLER_NAMES = tuple(_SAMPLERS)


def build_sampler(name: str, scheduler_config) -> object:
    """A fresh diffusers scheduler for sampler ``name`` on the model's noise schedule."""
    if name not in _SAMPLERS:
        raise ConfigError(
            f"eval.sampler: {name!r} is not allowed; allowed: {', '.join(SAMPLER_NAMES)}"
        )
    if "use_dynamic_shifting" in dict(scheduler_config):  # a flow-matching schedule
        if name != "euler":
            raise ConfigError(
                f"eval.sampler: {name!r} is not allowed for a flow-matching model (Flux); "
                "allowed: euler (the flow-matching Euler sampler)"
            )
        return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
    if name == "lms" and importlib.util.find_spec("scipy") is None:
        raise BackendMissingError("eval.sampler=lms", "scipy")
    cls, options = _SAMPLERS[name]
    return cls.from_config(dict(scheduler_config), **options)

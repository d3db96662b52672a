"""What the benchmarks build: composed run configs and fresh base models.

The configs are the project's own (``conf/``), composed with Hydra's compose API and the
benchmark's overrides, so that "ours" is exactly what ``python -m sweeper`` would train.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trainer.models.components import SDComponents

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_DIR / "conf"
FLUX_MODELS = ("tiny_flux", "flux_shape")
MODELS = ("tiny", "sd15_shape", "tiny_sdxl", "sdxl_shape", *FLUX_MODELS)


def compose_run(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """The project's config with ``overrides``, writing under ``output_dir``/``cache_dir``."""
    base = [
        f"paths.project_dir={PROJECT_DIR}",
        f"paths.output_dir={output_dir}",
        f"paths.cache_dir={cache_dir}",
        "train.progress_bar=false",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*base, *overrides])


def build_components(model: str, device: torch.device, seed: int = 0, flow=None) -> SDComponents:
    """A fresh base model (random weights); the ``*_shape`` models are initialised on
    ``device`` directly. SDXL models (``tiny_sdxl``, ``sdxl_shape``) are ``SDXLComponents``,
    Flux models (``tiny_flux``, ``flux_shape``) ``FluxComponents`` with ``flow`` (the run's
    ``FlowSettings``: T5's token count, the timestep sampling; default: the built-in's)."""
    if model in FLUX_MODELS:
        from trainer.models import flux

        if model == "flux_shape":
            return flux.build_flux_shape_components(seed, flow, device=device)
        if device.type == "meta":
            with device:
                return flux.build_tiny_flux_components(seed, flow)
        return flux.build_tiny_flux_components(seed, flow)
    if model == "tiny":
        from trainer.models.tiny import build_tiny_components

        if device.type == "meta":
            with device:
                return build_tiny_components(seed)
        return build_tiny_components(seed)  # moved to the device by the run
    if model == "sd15_shape":
        from trainer.models.sd15_shape import build_sd15_shape_components

        return build_sd15_shape_components(seed, device=device)
    if model == "tiny_sdxl":
        from trainer.models.sdxl import build_tiny_sdxl_components

        if device.type == "meta":
            with device:
                return build_tiny_sdxl_components(seed)
        return build_tiny_sdxl_components(seed)
    if model == "sdxl_shape":
        from trainer.models.sdxl import build_sdxl_shape_components

        return build_sdxl_shape_components(seed, device=device)
    raise ValueError(f"--model: {model!r} is not allowed; allowed: {', '.join(MODELS)}")


def meta_components(model: str, flow=None) -> SDComponents:
    """The model's modules on the ``meta`` device: shapes only, for FLOP counting."""
    return build_components(model, torch.device("meta"), flow=flow)


def release(device: torch.device) -> None:
    """Free what the last measurement left, so the next one's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

"""Speed options of a training run: the ``train`` keys that change how fast, never what, it learns.

* ``channels_last``: the UNet in channels-last memory format, which cuDNN's tensor-core
  convolutions prefer (``auto`` = on CUDA);
* ``fused_optimizer``: torch's fused AdamW / Adam / SGD kernel, one launch for every parameter
  instead of several per tensor (``auto`` = on CUDA; other optimizers are left as they are);
* ``compile``: ``torch.compile`` of the UNet (the first steps pay for compilation): ``true``
  (the default mode) or a mode name, e.g. ``reduce-overhead`` (CUDA graphs: fewer launches,
  for small batches; each bucket shape is compiled and captured once);
* ``frozen_precision``: the frozen base weights of the UNet / transformer and every text
  encoder (Flux's T5-XXL too, which no adapter trains) stored in the autocast dtype (``auto`` =
  when mixed precision is on), as diffusers' and kohya's LoRA scripts do: half the memory, and
  autocast no longer casts every weight at every step. The adapters (and anything else
  trained) stay in fp32. The VAE is left alone: its weights are part of the latent cache's key.

On the CPU every ``auto`` is off, so CPU runs stay bitwise reproducible.

``fp8_base`` (Flux, kohya's ``--fp8_base``) is a memory option, not a speed one: the
transformer's frozen Linear weights stored in float8_e4m3fn and upcast to the autocast dtype
layer by layer for each forward (diffusers' ``enable_layerwise_casting``), so it changes the
base weights by fp8 rounding. The adapters keep their training dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from trainer.errors import ConfigError
from trainer.settings.read import value

# The keys are checked by trainer.settings.train (before torch is imported).
from trainer.settings.train import speed_problems  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FP8_STORAGE = torch.float8_e4m3fn  # kohya's fp8_base dtype (and diffusers' examples')


@dataclass(frozen=True)
class SpeedOptions:
    """The resolved speed options of one run on one device."""

    channels_last: bool = False
    fused_optimizer: bool = False
    compile: bool | str = False  # False, True (default mode) or a torch.compile mode
    frozen_dtype: torch.dtype | None = None  # None: keep the frozen weights as loaded
    # train.fp8_base: the dtype fp8-stored weights are computed in; None = no fp8 storage.
    fp8_compute_dtype: torch.dtype | None = None


def _switch(setting: Any, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def speed_options(train: Any, device: torch.device, autocast: torch.dtype | None) -> SpeedOptions:
    """Resolve the speed keys of ``train`` (the typed settings or the group) for ``device`` and
    the run's autocast dtype."""
    frozen = value(train, "frozen_precision")
    fp8 = value(train, "fp8_base", False) is True
    if fp8 and autocast is None:
        raise ConfigError(
            f"train.fp8_base: true needs mixed precision, which is off on {device.type} "
            "(train.mixed_precision auto is fp32 on the CPU); allowed: train.mixed_precision "
            "bf16 or fp16, or fp8_base false"
        )
    return SpeedOptions(
        channels_last=_switch(value(train, "channels_last"), device),
        fused_optimizer=_switch(value(train, "fused_optimizer"), device),
        compile=value(train, "compile"),
        frozen_dtype=autocast if frozen == "auto" else None,
        fp8_compute_dtype=autocast if fp8 else None,
    )


def frozen_modules(components: Any) -> list[torch.nn.Module]:
    """The modules whose frozen weights follow ``train.frozen_precision``: every module of the
    model but the VAE. Flux's T5-XXL is one although nothing trains it: kohya's
    ``flux_train_network.py`` loads it in the weight dtype too (``load_t5xxl(args.t5xxl,
    weight_dtype, ...)``, or ``text_encoders[1].to(weight_dtype)`` before caching)."""
    return [module for module in components.modules if module is not components.vae]


def cast_frozen(modules: list[torch.nn.Module], dtype: torch.dtype | None) -> int:
    """Store every frozen floating-point parameter of ``modules`` in ``dtype``; returns how many.

    Trainable parameters (the adapters) keep their dtype: the optimizer updates them in fp32.
    Modules a transformers model keeps in fp32 stay there, as ``from_pretrained`` keeps them:
    ``_keep_in_fp32_modules`` in fp16 (T5's ``wo``, whose fp16 outputs overflow),
    ``_keep_in_fp32_modules_strict`` in fp16 and bf16.
    """
    if dtype is None:
        return 0
    count = 0
    for module in modules:
        kept = _kept_in_fp32(module, dtype)
        for name, param in module.named_parameters():
            if param.requires_grad or not param.is_floating_point() or param.dtype == dtype:
                continue
            if kept and kept.intersection(name.split(".")):
                continue
            param.data = param.data.to(dtype)
            count += 1
    return count


def _kept_in_fp32(module: torch.nn.Module, dtype: torch.dtype) -> set[str]:
    kept = set(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        kept |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
    return kept


def _fp8_skip_patterns(model: torch.nn.Module) -> tuple[str, ...]:
    """The layers kept out of fp8: diffusers' default skips but ``norm`` (which in Flux catches
    the AdaLN modulation Linears, a quarter of the transformer, that kohya's ``--fp8_base``
    stores in fp8 too; the norm layers themselves are never cast), the model's fp32 modules,
    and peft's adapter layers (the list ``enable_layerwise_casting`` adds)."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
    from peft.tuners.lora.layer import LoraLayer

    kept = tuple(p for p in DEFAULT_SKIP_MODULES_PATTERN if p != "norm")
    fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return kept + fp32 + tuple(LoraLayer.adapter_layer_names)


def store_fp8(model: torch.nn.Module, compute_dtype: torch.dtype | None) -> int:
    """Store ``model``'s frozen Linear / Conv / Embedding layers in float8_e4m3fn, each upcast to
    ``compute_dtype`` for its forward and back after it (diffusers' layerwise casting hooks,
    applied after the adapters are injected); returns how many weights are stored in fp8.
    peft's adapters (``lora_A`` / ``lora_B``) keep their training dtype."""
    if compute_dtype is None:
        return 0
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(
        model, FP8_STORAGE, compute_dtype, skip_modules_pattern=_fp8_skip_patterns(model)
    )
    trained = [
        n for n, p in model.named_parameters() if p.requires_grad and p.dtype == FP8_STORAGE
    ]
    if trained:
        raise RuntimeError(f"train.fp8_base: trained parameters were stored in fp8: {trained[:4]}")
    return sum(1 for p in model.parameters() if p.dtype == FP8_STORAGE)


def prepare_unet(unet: torch.nn.Module, options: SpeedOptions) -> None:
    """Channels-last and ``torch.compile``, in place (the module and its keys stay the same)."""
    if options.channels_last:
        unet.to(memory_format=torch.channels_last)
    if options.compile is True:
        unet.compile()
    elif options.compile:
        unet.compile(mode=options.compile)


def describe(options: SpeedOptions) -> str:
    frozen = str(options.frozen_dtype).replace("torch.", "") if options.frozen_dtype else "as is"
    fp8 = (
        f" fp8 base (computed in {options.fp8_compute_dtype})" if options.fp8_compute_dtype else ""
    )
    return (
        f"channels_last={options.channels_last} fused_optimizer={options.fused_optimizer} "
        f"compile={options.compile} frozen weights={frozen}{fp8}"
    )

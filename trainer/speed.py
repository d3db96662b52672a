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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from trainer.settings.read import value

# The keys are checked by trainer.settings.train (before torch is imported).
from trainer.settings.train import speed_problems  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedOptions:
    """The resolved speed options of one run on one device."""

    channels_last: bool = False
    fused_optimizer: bool = False
    compile: bool | str = False  # False, True (default mode) or a torch.compile mode
    frozen_dtype: torch.dtype | None = None  # None: keep the frozen weights as loaded


def _switch(setting: Any, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def speed_options(train: Any, device: torch.device, autocast: torch.dtype | None) -> SpeedOptions:
    """Resolve the speed keys of ``train`` (the typed settings or the group) for ``device`` and
    the run's autocast dtype."""
    frozen = value(train, "frozen_precision")
    return SpeedOptions(
        channels_last=_switch(value(train, "channels_last"), device),
        fused_optimizer=_switch(value(train, "fused_optimizer"), device),
        compile=value(train, "compile"),
        frozen_dtype=autocast if frozen == "auto" else None,
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
    """
    if dtype is None:
        return 0
    count = 0
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                count += 1
    return count


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
    return (
        f"channels_last={options.channels_last} fused_optimizer={options.fused_optimizer} "
        f"compile={options.compile} frozen weights={frozen}"
    )

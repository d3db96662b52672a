"""Speed options of a training run: the ``train`` keys that change how fast, never what, it learns.

* ``channels_last``: the UNet in channels-last memory format, which cuDNN's tensor-core
  convolutions prefer (``auto`` = on CUDA);
* ``fused_optimizer``: torch's fused AdamW / Adam / SGD kernel, one launch for every parameter
  instead of several per tensor (``auto`` = on CUDA; other optimizers are left as they are);
* ``compile``: ``torch.compile`` of the UNet (the first steps pay for compilation): ``true``
  (the default mode) or a mode name, e.g. ``reduce-overhead`` (CUDA graphs: fewer launches,
  for small batches; each bucket shape is compiled and captured once);
* ``frozen_precision``: the frozen base weights of the UNet and text encoder stored in the
  autocast dtype (``auto`` = when mixed precision is on), as diffusers' and kohya's LoRA
  scripts do: half the memory, and autocast no longer casts every weight at every step. The
  adapters (and anything else trained) stay in fp32. The VAE is left alone: its weights are
  part of the latent cache's key.

On the CPU every ``auto`` is off, so CPU runs stay bitwise reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

SWITCH_VALUES = ("auto", True, False)
FROZEN_PRECISIONS = ("auto", "fp32")
KEYS = ("channels_last", "fused_optimizer", "compile", "frozen_precision")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class SpeedOptions:
    """The resolved speed options of one run on one device."""

    channels_last: bool = False
    fused_optimizer: bool = False
    compile: bool | str = False  # False, True (default mode) or a torch.compile mode
    frozen_dtype: torch.dtype | None = None  # None: keep the frozen weights as loaded


def _get(train_cfg: Any, key: str, default: Any) -> Any:
    if hasattr(train_cfg, "get"):
        return train_cfg.get(key, default)
    return getattr(train_cfg, key, default)


def speed_problems(train_cfg: Any) -> list[str]:
    """Every bad speed key of the ``train`` group, as messages (empty when all are valid)."""
    problems = []
    for key in ("channels_last", "fused_optimizer"):
        value = _get(train_cfg, key, "auto")
        if not (value == "auto" or isinstance(value, bool)):
            problems.append(f"train.{key}: {value!r} is not allowed; allowed: auto, true, false")
    value = _get(train_cfg, "compile", False)
    if not (isinstance(value, bool) or value in COMPILE_MODES):
        problems.append(
            f"train.compile: {value!r} is not allowed; allowed: true, false, "
            f"{', '.join(COMPILE_MODES)}"
        )
    value = _get(train_cfg, "frozen_precision", "auto")
    if value not in FROZEN_PRECISIONS:
        problems.append(
            f"train.frozen_precision: {value!r} is not allowed; allowed: "
            f"{', '.join(FROZEN_PRECISIONS)}"
        )
    return problems


def _switch(value: Any, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


def speed_options(
    train_cfg: Any, device: torch.device, autocast: torch.dtype | None
) -> SpeedOptions:
    """Resolve the speed keys of ``train_cfg`` for ``device`` and the run's autocast dtype."""
    frozen = _get(train_cfg, "frozen_precision", "auto")
    return SpeedOptions(
        channels_last=_switch(_get(train_cfg, "channels_last", "auto"), device),
        fused_optimizer=_switch(_get(train_cfg, "fused_optimizer", "auto"), device),
        compile=_get(train_cfg, "compile", False),
        frozen_dtype=autocast if frozen == "auto" else None,
    )


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

"""Corrections to lycoris-lora 4.1.3's modules, applied to every module we build or load.

Both found by comparing each module's forward pass with its merged weight on the tiny model
(``tests/component/test_lycoris_networks.py``, ``tests/component/test_lora_tools.py``):

1. LoHa and LoKr: ``get_diff_weight`` (and so ``get_merged_weight`` / ``merge_to``) multiplies by
   ``alpha / dim`` a second time (``get_weight`` already applies it) and leaves out the max-norm
   ``scalar``; the forward pass is right. Merged weights then differ from the adapted model
   whenever alpha != dim. Fixed: the diff is the forward pass's, ``get_weight(shape) * scalar``.
2. Weight decomposition (DoRA): the multiplier only interpolates the magnitude rescaling,
   ``(W + dW) * (s * (m / |W + dW|) - 1) + 1)``, so strength 0 still applies the direction delta
   ``dW``. Fixed to the strength WebUI and ComfyUI apply, ``W + s * (W' - W)``: 0 = base model.

The fixes are subclasses that override one method each; modules built by LyCORIS' own builders
and loader are re-classed to them (``apply_fixes``), since those construct the modules.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lycoris.functional.general import weight_decompose
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from torch import nn


class _WebuiStrength:
    """Strength s of a weight-decomposed module: ``W + s * (W' - W)``."""

    def apply_weight_decompose(self, weight: torch.Tensor, multiplier: float = 1):
        full = weight_decompose(weight, self.dora_scale, 1, self.wd_on_out)
        if multiplier == 1:
            return full
        base = self._current_weight().to(full)
        return base + multiplier * (full - base)


class _ForwardDiff:
    """The weight delta the forward pass applies (``alpha / dim`` once, times ``scalar``)."""

    def get_diff_weight(self, multiplier=1, shape=None, device=None):
        diff = self.get_weight(self.shape) * self.scalar * multiplier
        if shape is not None:
            diff = diff.view(shape)
        if device is not None:
            diff = diff.to(device)
        return diff, None


class FixedLoConModule(_WebuiStrength, LoConModule):
    """LoRA / LoCon / DoRA with WebUI's DoRA strength."""


class FixedLohaModule(_ForwardDiff, _WebuiStrength, LohaModule):
    """LoHa whose merged weight equals its forward pass."""


class FixedLokrModule(_ForwardDiff, _WebuiStrength, LokrModule):
    """LoKr whose merged weight equals its forward pass."""


_FIXED = {
    LoConModule: FixedLoConModule,
    LohaModule: FixedLohaModule,
    LokrModule: FixedLokrModule,
}


def apply_fixes(modules: Iterable[nn.Module]) -> None:
    """Re-class LyCORIS modules to their fixed subclasses (in place; state is untouched)."""
    for module in modules:
        fixed = _FIXED.get(type(module))
        if fixed is not None:
            module.__class__ = fixed

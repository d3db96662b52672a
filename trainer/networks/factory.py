"""Build the adapter network that ``network.type`` names.

``lora`` / ``locon`` are kohya's LierLa / C3Lier on peft (``lora.apply_lora``); ``loha``,
``lokr``, ``ia3`` and ``dora`` are LyCORIS' (``lycoris_net.build_lycoris``). Both kinds of
network offer the same interface, which the training loop and the run use:

* ``unet_parameters()``, ``text_encoder_parameters()``: what the optimizer trains;
* ``kohya_state_dict(dtype)`` / ``load_kohya_state_dict(sd, source)``: the file's tensors;
  loading a file of another type raises ``ModelLoadError`` naming both types;
* ``apply_max_norm(x) -> (scaled, mean norm, max norm)``; ``set_scale(unet, te)``;
* ``kohya_info()``: the ``ss_network_*`` metadata; ``num_modules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from trainer.settings.network import (
    LORA_TYPES,
    NETWORK_TYPES,
    LoraSpec,
    LycorisSpec,
    NetworkSpec,
    network_config_problems,
    read_network,
)

__all__ = ["NETWORK_TYPES", "AdapterNetwork", "build_network", "network_config_problems"]


class AdapterNetwork(Protocol):
    """What ``build_network`` returns, whatever the type."""

    num_modules: int

    def unet_parameters(self) -> list[nn.Parameter]: ...
    def text_encoder_parameters(self) -> list[nn.Parameter]: ...
    def kohya_state_dict(self, dtype: torch.dtype = ...) -> dict[str, torch.Tensor]: ...
    def load_kohya_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], source: str
    ) -> None: ...
    def apply_max_norm(self, max_norm: float) -> tuple[torch.Tensor | float, ...]: ...
    def set_scale(self, unet_scale: float, te_scale: float) -> None: ...
    def kohya_info(self) -> dict[str, Any]: ...


def build_network(
    unet: nn.Module,
    text_encoder: nn.Module | Mapping[str, nn.Module],
    network: NetworkSpec | Any,
    family=None,
) -> AdapterNetwork:
    """Freeze the base model and add the adapters of the spec's type. ``network``: the run's
    typed spec, or a ``network`` group (read by ``trainer.settings.network.read_network``).

    ``text_encoder``: one module or the family's text encoders by component name.
    ``family`` (a ``trainer.families`` ModelFamily, default SD 1.x) chooses which layers are
    adapted and their kohya names (``family_of(components)`` gives a loaded model's)."""
    spec = network if isinstance(network, LoraSpec | LycorisSpec) else read_network(network)
    if spec.type in LORA_TYPES:
        from trainer.networks.lora import apply_lora

        return apply_lora(unet, text_encoder, spec, family)
    # Imported here: lycoris-lora is only needed by the LyCORIS types.
    from trainer.networks.lycoris_net import build_lycoris

    return build_lycoris(unet, text_encoder, spec, family)

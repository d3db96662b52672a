"""Counters for the cache goal (P4): VAE encodes and base-model loads while something runs.

VAE encodes are counted at the source, a global forward hook on every VAE ``Encoder`` module
(the latent cache, the validation loss and anything else that encodes pixels all go through
one), in images. Base-model loads are ``evaluators.model_cache.LOAD_COUNTS`` plus calls of
``trainer.models.loading.load_model`` made by the trainer itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import Encoder

from evaluators import model_cache


@dataclass
class Counts:
    vae_encoded_images: int = 0
    eval_base_loads: int = 0


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """Count VAE-encoded images and evaluation base-model loads inside the ``with`` block."""
    counts = Counts()
    loads_before = sum(model_cache.LOAD_COUNTS.values())

    def hook(module, args, output):
        if isinstance(module, Encoder) and args and isinstance(args[0], torch.Tensor):
            counts.vae_encoded_images += int(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()
        counts.eval_base_loads = sum(model_cache.LOAD_COUNTS.values()) - loads_before

"""Counters for the cache goal (P4): VAE encodes and base-model loads while something runs.

VAE encodes are counted at the source, a global forward hook on every VAE ``Encoder`` module
(the latent cache, the validation loss and anything else that encodes pixels all go through
one), in images. The evaluation's base-model loads are the calls of
``trainer.models.loading.load_model`` inside the block: an evaluation's
:class:`~evaluators.model_cache.ModelPool` looks the function up at each load, while the trainer
(``trainer.run``, imported here first) holds its own reference, counted apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import Encoder

import trainer.models.loading as loading
import trainer.run  # noqa: F401 - binds the trainer's load_model before any wrapping here


@dataclass
class Counts:
    vae_encoded_images: int = 0
    eval_base_loads: int = 0


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """Count VAE-encoded images and evaluation base-model loads inside the ``with`` block."""
    counts = Counts()
    original = loading.load_model

    def counted_load(*args, **kwargs):
        counts.eval_base_loads += 1
        return original(*args, **kwargs)

    def hook(module, args, output):
        if isinstance(module, Encoder) and args and isinstance(args[0], torch.Tensor):
            counts.vae_encoded_images += int(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    loading.load_model = counted_load
    try:
        yield counts
    finally:
        loading.load_model = original
        handle.remove()

"""Project an evaluation measured on the tiny model to another architecture, in FLOPs.

An evaluation's work is a list of module calls (UNet forwards during sampling and for the
validation loss, VAE decodes and encodes, text-encoder forwards) whose number and batch sizes
do not depend on the architecture. Recording them on the tiny model (on a CPU, in seconds) and
pricing each call with the target model's FLOPs at the target resolution (counted on the meta
device) gives what the same evaluation costs on SD 1.5 without running it there. Scorer
models (CLIP, DINO) are left out: on real scorers they cost a few GFLOP per image.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.autoencoders.vae import Decoder, Encoder
from transformers import CLIPTextModel

from bench.measure import count_flops
from bench.runs import meta_components

KINDS = {
    UNet2DConditionModel: "UNet forward",
    Decoder: "VAE decode",
    Encoder: "VAE encode",
    CLIPTextModel: "text encoder",
}


@contextlib.contextmanager
def recording_calls() -> Iterator[Counter]:
    """Count calls of the priced modules by (kind, input shape without the batch), in samples."""
    calls: Counter = Counter()

    def hook(module, args, output):
        kind = KINDS.get(type(module))
        if kind is None or not args or not isinstance(args[0], torch.Tensor):
            return
        shape = tuple(args[0].shape)
        calls[(kind, shape[1:])] += shape[0]

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _scaled(kind: str, shape: tuple, factor: float) -> tuple:
    if kind == "text encoder":
        return shape
    channels, height, width = shape[0], shape[-2], shape[-1]
    return (channels, round(height * factor), round(width * factor))


def price_calls(calls: Counter, model: str, factor: float) -> dict[str, float]:
    """FLOPs per call kind on ``model`` (meta device), spatial sizes scaled by ``factor``."""
    meta = meta_components(model)
    modules = {
        "UNet forward": meta.unet,
        "VAE decode": meta.vae.decoder,
        "VAE encode": meta.vae.encoder,
        "text encoder": meta.text_encoder,
    }
    hidden = meta.unet.config.cross_attention_dim
    totals: dict[str, float] = {}
    for (kind, shape), samples in calls.items():
        target = _scaled(kind, shape, factor)
        module = modules[kind]

        def forward(module=module, target=target, kind=kind):
            with torch.no_grad():
                if kind == "text encoder":
                    module(torch.zeros((1, *target), dtype=torch.long, device="meta"))
                elif kind == "UNet forward":
                    x = torch.zeros((1, *target), device="meta")
                    t = torch.zeros(1, dtype=torch.long, device="meta")
                    module(x, t, torch.zeros(1, 77, hidden, device="meta"))
                else:
                    module(torch.zeros((1, *target), device="meta"))

        totals[kind] = totals.get(kind, 0.0) + count_flops(forward) * samples
    return totals

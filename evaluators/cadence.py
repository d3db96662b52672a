"""``eval.every_n_epochs: auto``: evaluate every N-th epoch so evaluation stays a bounded share
of training.

Costs are counted in *units*: one UNet forward of one image at the training resolution. The
constants are the FLOP projection of ``python -m bench eval --project-to sd15_shape``
(bench/RESULTS.md; SD 1.5 shape, 512 px): the UNet is ~90% of an evaluation's FLOPs, the
scoring models (CLIP, DINO) under 1%, so they are left out.

    units = evaluation_units(settings, n_items, n_checkpoints, eval_pixels, train_pixels)
    n = auto_every_n_epochs(units, train_images_per_epoch, max_overhead)
"""

from __future__ import annotations

import math

from evaluators.settings import EvalSettings

# A VAE decode of one image costs about 3 UNet forwards at the same resolution (bench: 2
# decodes = 16.3% of 30.8 TFLOP, a UNet forward = 0.80 TFLOP).
DECODE_UNITS = 3.0
# Training one image (UNet forward + backward with LoRA adapters; the base weights are frozen, so
# the backward computes no weight gradients for them) costs about 2.2 UNet forwards (bench: 52.8
# TFLOP for 30 images = 1.76 TFLOP each, a UNet forward = 0.80 TFLOP). Gradient checkpointing
# adds a forward (~3.2); the lower figure keeps the overhead bound true in both cases.
TRAIN_UNITS_PER_IMAGE = 2.2


def pairs_per_evaluation(settings: EvalSettings) -> int:
    """Strength pairs an evaluated epoch is scored at: the grid for ``grid_epochs: all``, else
    (1.0, 1.0) alone (``best``/``last`` add one grid per run, a fixed cost no cadence
    lowers)."""
    return len(settings.strength_pairs()) if settings.grid_epochs == "all" else 1


def evaluation_units(
    settings: EvalSettings,
    n_items: int,
    n_checkpoints: int,
    eval_pixels: int,
    train_pixels: int,
) -> float:
    """Cost of evaluating one epoch, in UNet forwards at the training resolution.

    Per checkpoint and strength pair: ``n_items`` images of ``steps`` sampler steps (two UNet
    forwards a step with classifier-free guidance) and a VAE decode each, when a metric needs
    images; plus ``val_max_images x len(val_timesteps)`` forwards for ``val_loss`` (an upper
    bound: fewer validation images may exist). Everything runs at the evaluation size, so the
    sum scales with ``eval_pixels / train_pixels``.
    """
    per_cell = 0.0
    if settings.generation_metrics:
        forwards = 2 if settings.guidance_scale > 1 else 1
        per_cell += n_items * (settings.steps * forwards + DECODE_UNITS)
    if "val_loss" in settings.metrics:
        per_cell += settings.val_max_images * len(settings.val_timesteps)
    scale = eval_pixels / train_pixels
    return per_cell * pairs_per_evaluation(settings) * n_checkpoints * scale


def overhead(
    eval_units: float,
    train_images_per_epoch: int,
    every_n_epochs: int,
    *,
    units_per_train_image: float = TRAIN_UNITS_PER_IMAGE,
) -> float:
    """Evaluation cost over training cost, one evaluation amortised over ``every_n_epochs``."""
    train_units = every_n_epochs * train_images_per_epoch * units_per_train_image
    return eval_units / train_units


def auto_every_n_epochs(
    eval_units: float,
    train_images_per_epoch: int,
    max_overhead: float,
    *,
    units_per_train_image: float = TRAIN_UNITS_PER_IMAGE,
) -> int:
    """The smallest N >= 1 with ``eval_units / (N * train_images_per_epoch * units/image)``
    at most ``max_overhead``."""
    if train_images_per_epoch < 1 or max_overhead <= 0:
        raise ValueError(
            f"train_images_per_epoch {train_images_per_epoch!r} must be >= 1 and "
            f"max_overhead {max_overhead!r} > 0"
        )
    epoch_units = train_images_per_epoch * units_per_train_image
    # The relative tolerance keeps an exact bound (54 / (3 * 90) = 0.2) from rounding up.
    return max(1, math.ceil(eval_units / (epoch_units * max_overhead) * (1 - 1e-9)))

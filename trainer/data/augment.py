"""Augmentations: horizontal flip, colour jitter and random crop, seeded per sample and epoch.

A flip has two possible outcomes, so both can be encoded once and cached; colour jitter and a
random crop give different pixels at every step, so they turn latent caching off and the images
are encoded by the VAE at every step instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from trainer.data.common import raise_if, read_keys, require, rng_for

CONFIG_KEYS = ("flip_aug", "color_aug", "random_crop")
# Colour jitter strength: a hue rotation of up to +-16 degrees and brightness +-10 %, small
# enough to keep a subject's colours recognisable.
MAX_HUE_SHIFT = 16 / 360
MAX_BRIGHTNESS_CHANGE = 0.10


@dataclass(frozen=True)
class AugmentOptions:
    flip: bool = False
    color: bool = False
    random_crop: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentOptions:
        """Read ``flip_aug``, ``color_aug`` and ``random_crop``."""
        values, problems = read_keys(cfg, tuple(CONFIG_KEYS), "data")
        for key in CONFIG_KEYS:
            require(values, key, lambda v: isinstance(v, bool), "must be true or false", problems)
        raise_if(problems)
        return cls(values["flip_aug"], values["color_aug"], values["random_crop"])

    @property
    def pixels_vary(self) -> bool:
        """True when the pixels of a sample change at every step, so latents cannot be cached."""
        return self.color or self.random_crop


def flip_for_step(seed: int, epoch: int, index: int) -> bool:
    """Whether sample ``index`` is mirrored in ``epoch`` (probability 0.5, reproducible)."""
    return rng_for("flip", seed, epoch, index).random() < 0.5


def color_jitter(image: Image.Image, rng: random.Random) -> Image.Image:
    """``image`` (RGB) with its hue rotated and its brightness scaled by small random amounts."""
    hue_shift = round(rng.uniform(-MAX_HUE_SHIFT, MAX_HUE_SHIFT) * 256)
    brightness = 1.0 + rng.uniform(-MAX_BRIGHTNESS_CHANGE, MAX_BRIGHTNESS_CHANGE)
    hsv = np.array(image.convert("HSV"), dtype=np.int16)
    # PIL stores hue as 0..255 for the full circle, so the shift wraps around modulo 256.
    hsv[..., 0] = (hsv[..., 0] + hue_shift) % 256
    shifted = Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")
    return ImageEnhance.Brightness(shifted).enhance(brightness)

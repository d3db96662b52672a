"""Batch augmentations for the world's scorers, in plain torch on ``[B, 3, H, W]`` in [0, 1].

Two uses: the oracle learns on rendered scenes made to look like *generated* ones
(:func:`degrade`: slight scale / shift, blur and resolution loss as after a VAE, colour
shifts, pixel and low-frequency noise), and the DINO-like model learns which two views show the
same image (:func:`two_views`: crop-resize, flip, small colour jitter, blur). Every random draw
comes from the given ``torch.Generator``, so a seed fixes a run.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def affine(
    x: torch.Tensor,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.9, 1.1),
    shift_px: float = 2.0,
    rotate: float = 0.15,
) -> torch.Tensor:
    """Random zoom, shift (pixels) and rotation (radians) per image; edges repeat the border."""
    n, _, h, w = x.shape
    s = _uniform(n, *scale, gen)
    a = _uniform(n, -rotate, rotate, gen)
    tx = _uniform(n, -shift_px, shift_px, gen) * 2 / w
    ty = _uniform(n, -shift_px, shift_px, gen) * 2 / h
    theta = torch.stack(
        [
            torch.stack([torch.cos(a) / s, -torch.sin(a) / s, tx], dim=1),
            torch.stack([torch.sin(a) / s, torch.cos(a) / s, ty], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every image with one ``sigma`` (pixels)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def random_blur(x: torch.Tensor, gen: torch.Generator, max_sigma: float = 1.5) -> torch.Tensor:
    """Each image blended between sharp and blurred at ``max_sigma``: blur of random strength."""
    mix = torch.rand(x.shape[0], 1, 1, 1, generator=gen)
    return x + mix * (gaussian_blur(x, max_sigma) - x)


def resolution_loss(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per batch, down-sample to 1/2-3/4 size and back (VAE-like)."""
    if torch.rand(1, generator=gen).item() >= p:
        return x
    h, w = x.shape[-2:]
    f = float(_uniform(1, 0.5, 0.75, gen))
    small = F.interpolate(x, size=(int(h * f), int(w * f)), mode="bilinear", antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def colour_shift(
    x: torch.Tensor, gen: torch.Generator, gain: float = 0.12, offset: float = 0.06
) -> torch.Tensor:
    """Per-channel gain and offset, global contrast and saturation changes."""
    n = x.shape[0]
    g = 1 + _uniform(n * 3, -gain, gain, gen).view(n, 3, 1, 1)
    o = _uniform(n * 3, -offset, offset, gen).view(n, 3, 1, 1)
    x = x * g + o
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + _uniform(n, -0.2, 0.2, gen).view(n, 1, 1, 1))
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * (1 + _uniform(n, -0.25, 0.15, gen).view(n, 1, 1, 1))
    return x.clamp(0, 1)


def noise(x: torch.Tensor, gen: torch.Generator, pixel: float = 0.06, blotch: float = 0.05):
    """Pixel noise and smooth low-frequency blotches, each of random strength per image."""
    n, c, h, w = x.shape
    a = _uniform(n, 0, pixel, gen).view(n, 1, 1, 1)
    b = _uniform(n, 0, blotch, gen).view(n, 1, 1, 1)
    low = F.interpolate(torch.randn(n, c, 6, 6, generator=gen), size=(h, w), mode="bicubic")
    return (x + a * torch.randn(x.shape, generator=gen) + b * low).clamp(0, 1)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A rendered scene made to look generated: geometry, blur, colour, noise."""
    x = affine(x, gen)
    x = resolution_loss(x, gen)
    x = random_blur(x, gen)
    x = colour_shift(x, gen)
    return noise(x, gen)


def crop_resize(x: torch.Tensor, gen: torch.Generator, scale=(0.45, 1.0)) -> torch.Tensor:
    """Random crops covering ``scale`` of the area (aspect 3/4-4/3), resized back, per image."""
    n = x.shape[0]
    area = _uniform(n, *scale, gen)
    aspect = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), gen))
    sw = torch.sqrt(area * aspect).clamp(max=1.0)
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    zero = torch.zeros(n)
    theta = torch.stack(
        [torch.stack([sw, zero, cx], dim=1), torch.stack([zero, sh, cy], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def two_views(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of every image (self-supervised contrastive pairs).

    Colour jitter is kept small: in this world colour is identity (the subject is the magenta
    star), so views must not teach the model to ignore it.
    """

    def view(v: torch.Tensor) -> torch.Tensor:
        v = crop_resize(v, gen)
        flip = torch.rand(v.shape[0], generator=gen) < 0.5
        v = torch.where(flip.view(-1, 1, 1, 1), v.flip(-1), v)
        v = random_blur(v, gen, max_sigma=1.0)
        v = colour_shift(v, gen, gain=0.05, offset=0.03)
        return noise(v, gen, pixel=0.03, blotch=0.02)

    return view(x), view(x)

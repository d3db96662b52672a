"""A synthetic training set for throughput runs: square images in kohya's folder layout.

Throughput does not depend on what the images show, only on their size and count, so the
images are seeded noise over smooth gradients. All are ``size x size`` (one bucket: every batch
is full), and the folder's repeat count makes one epoch hold every step of the run, so no
epoch boundary (with its end-of-epoch bookkeeping) falls inside a measured window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_TOKEN = "bench subject"


def write_dataset(root: Path, size: int, images: int, samples: int, seed: int = 0) -> Path:
    """Write ``images`` images repeated to at least ``samples`` per epoch; returns the data dir."""
    repeats = max(1, math.ceil(samples / images))
    folder = Path(root) / f"{repeats}_{CLASS_TOKEN}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(images):
        base = (ramp[None, :, None] * rng.random(3) + ramp[:, None, None] * rng.random(3)) / 2
        noise = rng.normal(0, 24, (size, size, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"{CLASS_TOKEN}, photo {i}, seed {seed}")
    return Path(root)


def captions(images: int, seed: int = 0) -> list[str]:
    """The captions :func:`write_dataset` writes, in image order."""
    return [f"{CLASS_TOKEN}, photo {i}, seed {seed}" for i in range(images)]

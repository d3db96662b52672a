"""Decode an image and turn it into the model's input: RGB, bucket-sized, [-1, 1], CHW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trainer.data.buckets import Geometry
from trainer.errors import DataError

# Transparent pixels become white rather than whatever colour the file stores under them
# (often black), which is what the image looks like in a viewer.
_BACKGROUND = (255, 255, 255)


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as displayed: EXIF orientation applied, alpha over white, RGB."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except Exception as err:  # a file that verified at scan time can still fail to decode
        raise DataError(f"{str(path)!r}: cannot decode the image ({err})") from err
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def apply_geometry(image: Image.Image, geometry: Geometry, flip: bool = False) -> Image.Image:
    """Resize ``image`` to cover its bucket, crop the bucket out, and mirror it if asked."""
    if image.size != geometry.resized:
        # LANCZOS keeps detail when shrinking; BICUBIC rings less when enlarging.
        upscaling = geometry.resized[0] > image.size[0]
        resample = Image.Resampling.BICUBIC if upscaling else Image.Resampling.LANCZOS
        image = image.resize(geometry.resized, resample=resample)
    left, top = geometry.crop
    width, height = geometry.bucket
    if (left, top, width, height) != (0, 0, *image.size):
        image = image.crop((left, top, left + width, top + height))
    if flip:
        image = ImageOps.mirror(image)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 [3, H, W] tensor in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0

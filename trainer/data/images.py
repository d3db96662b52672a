"""Decode an image and turn it into the model's input: RGB, bucket-sized, [-1, 1], CHW."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageCms, ImageOps

from trainer.data.buckets import Geometry
from trainer.errors import DataError

if TYPE_CHECKING:
    import torch

# Transparent pixels become white rather than whatever colour the file stores under them
# (often black), which is what the image looks like in a viewer and what kohya does.
_BACKGROUND = (255, 255, 255)
# Integer modes wider than 8 bits. Pillow's own convert("RGB") clips them to 0..255, so a
# 16-bit grayscale PNG (0..65535) trains as a white square; they are scaled down instead.
# A 32-bit "I" image is what Pillow makes of 16-bit PNG/TIFF data, so it is read as 16-bit too.
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT_MAX = 65535


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as displayed: EXIF orientation applied, alpha over white, RGB."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
        return to_rgb(img)
    except Exception as err:  # a file that verified at scan time can still fail to decode
        raise DataError(f"{str(path)!r}: cannot decode the image ({err})") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image of ``img`` in any mode Pillow reads.

    * 16-bit and 32-bit integer grayscale (``I;16*``, ``I``): 0..65535 scaled to 0..255.
    * float grayscale (``F``): 0..1 scaled to 0..255 when every value lies in [0, 1] (how
      float images are usually stored), otherwise read as 0..255; clipped either way.
    * ``LAB``: converted to sRGB with LittleCMS (Pillow's ImageCms), not by a plain cast.
    * transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, a palette or ``tRNS``
      transparent colour): composited over white.
    * everything else (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``HSV`` ...):
      Pillow's conversion, which is exact for them.
    """
    if img.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(img).astype(np.float64) * (255.0 / _SIXTEEN_BIT_MAX)
        return _gray(values)
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        in_unit_range = values.size and values.min() >= 0.0 and values.max() <= 1.0
        return _gray(values * 255.0 if in_unit_range else values)
    if img.mode == "LAB":
        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        # NOOPTIMIZE: computed per pixel, not through a coarse lookup table (off by up to 6).
        to_srgb = ImageCms.buildTransform(lab, srgb, "LAB", "RGB", flags=ImageCms.Flags.NOOPTIMIZE)
        return ImageCms.applyTransform(img, to_srgb)
    if img.mode == "La":  # premultiplied alpha: Pillow converts it to RGBA only through LA
        img = img.convert("LA")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _gray(values: np.ndarray) -> Image.Image:
    pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").convert("RGB")


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
    import torch  # here: checking the images of a config needs no torch

    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0

"""Aspect-ratio buckets: train on images of different shapes without squashing them.

The bucket set holds every (width, height) whose sides are multiples of ``bucket_reso_steps``,
lie within ``[min_bucket_reso, max_bucket_reso]``, and whose area does not exceed the square
training resolution's (kohya's scheme). Each image goes to the bucket nearest its aspect ratio,
is resized to cover it and cropped; a batch holds images of one bucket only, since a batch is
one tensor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data.common import is_int, is_pair, raise_if, read_keys, require
from trainer.errors import DataError

Size = tuple[int, int]
"""(width, height) in pixels."""

# The SD VAE downsamples by 8: a side that is not a multiple of 8 has no whole latent size.
LATENT_FACTOR = 8
CONFIG_KEYS = (
    "resolution",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_reso_steps",
    "bucket_no_upscale",
)


@dataclass(frozen=True)
class BucketOptions:
    resolution: Size
    enabled: bool = True
    min_reso: int = 256
    max_reso: int = 1024
    step: int = 64
    no_upscale: bool = False

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    @classmethod
    def from_config(cls, cfg: Any) -> BucketOptions:
        """Read ``resolution`` (a side, or [width, height]) and the bucket keys."""
        values, problems = read_keys(cfg, tuple(CONFIG_KEYS), "data")
        if "resolution" in values:
            res = values["resolution"]
            values["resolution"] = tuple(res) if is_pair(res) else (res, res)
        require(
            values,
            "resolution",
            lambda r: all(is_int(s) and s > 0 for s in r),
            "must be a positive integer or a [width, height] pair",
            problems,
        )
        for key in ("enable_bucket", "bucket_no_upscale"):
            require(values, key, lambda v: isinstance(v, bool), "must be true or false", problems)
        for key in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
            require(values, key, lambda v: is_int(v) and v > 0, "must be an integer > 0", problems)
        raise_if(problems)
        options = cls(
            resolution=values["resolution"],
            enabled=values["enable_bucket"],
            min_reso=values["min_bucket_reso"],
            max_reso=values["max_bucket_reso"],
            step=values["bucket_reso_steps"],
            no_upscale=values["bucket_no_upscale"],
        )
        raise_if(options.geometry_problems())
        return options

    def geometry_problems(self) -> list[str]:
        """Why these numbers cannot make buckets (sides not multiples of 8, min > max ...)."""
        problems = []
        if any(side % LATENT_FACTOR for side in self.resolution):
            problems.append(
                f"data.resolution: {self.resolution} must be a multiple of "
                f"{LATENT_FACTOR} (the VAE downsamples by {LATENT_FACTOR})"
            )
        if not self.enabled:
            return problems
        if self.step % LATENT_FACTOR:
            problems.append(
                f"data.bucket_reso_steps: {self.step} must be a multiple of "
                f"{LATENT_FACTOR} (the VAE downsamples by {LATENT_FACTOR})"
            )
        for key, value in (("min_bucket_reso", self.min_reso), ("max_bucket_reso", self.max_reso)):
            if value % self.step:
                problems.append(
                    f"data.{key}: {value} must be a multiple of "
                    f"data.bucket_reso_steps ({self.step})"
                )
        if not self.min_reso <= min(self.resolution) <= max(self.resolution) <= self.max_reso:
            problems.append(
                f"data.resolution: {self.resolution} must lie within "
                f"data.min_bucket_reso ({self.min_reso}) and data.max_bucket_reso "
                f"({self.max_reso})"
            )
        return problems


@dataclass(frozen=True)
class Geometry:
    """How an image becomes a training one: resize to ``resized``, crop ``bucket`` at ``crop``."""

    bucket: Size
    resized: Size
    crop: tuple[int, int]
    """(left, top) of the crop window in the resized image."""

    def with_crop(self, crop: tuple[int, int]) -> Geometry:
        return Geometry(self.bucket, self.resized, crop)


def make_buckets(resolution: Size | int, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """The bucket set for a maximum area of ``resolution``'s, sorted by (width, height)."""
    width, height = (resolution, resolution) if is_int(resolution) else resolution
    max_area = width * height
    square = math.isqrt(max_area) // step * step
    buckets = {(square, square)}
    # Past max_area // min_reso no height is tall enough: stop there, however large
    # max_reso is (data.max_bucket_reso=10**9 would otherwise loop 10**8 times).
    for w in range(min_reso, min(max_reso, max_area // min_reso) + 1, step):
        h = min(max_reso, max_area // w // step * step)
        if h >= min_reso:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is closest to ``size``'s (log distance, so that 2:1 and
    1:2 are equally far from 1:1); ties go to the larger area, then the first in order."""
    log_ar = math.log(size[0] / size[1])
    return min(
        buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - log_ar), 12), -b[0] * b[1], b)
    )


def no_upscale_bucket(size: Size, max_area: int, step: int, max_reso: int) -> Size:
    """An image's own bucket that is never larger than the image.

    Scaled down (keeping its aspect ratio) only when larger than ``max_area``, then both sides
    rounded down to the step and capped at ``max_reso``.
    """
    scale = min(1.0, math.sqrt(max_area / (size[0] * size[1])))
    width = min(max_reso, int(size[0] * scale) // step * step)
    height = min(max_reso, int(size[1] * scale) // step * step)
    return width, height


def cover_size(size: Size, bucket: Size) -> Size:
    """The smallest size with ``size``'s aspect ratio that covers ``bucket``."""
    scale = max(bucket[0] / size[0], bucket[1] / size[1])
    return max(bucket[0], round(size[0] * scale)), max(bucket[1], round(size[1] * scale))


def center_crop(resized: Size, bucket: Size) -> tuple[int, int]:
    return (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2


def random_crop(resized: Size, bucket: Size, rng: random.Random) -> tuple[int, int]:
    return rng.randint(0, resized[0] - bucket[0]), rng.randint(0, resized[1] - bucket[1])


class BucketAssigner:
    """Gives each image size its geometry (bucket, resize, centre crop) under the options."""

    def __init__(self, options: BucketOptions):
        self.options = options
        self.buckets = (
            make_buckets(options.resolution, options.min_reso, options.max_reso, options.step)
            if options.enabled
            else [options.resolution]
        )

    def geometry(self, size: Size, name: str = "image") -> Geometry:
        """The geometry of an image of ``size``; DataError when it is too small for a bucket."""
        opts = self.options
        if not opts.enabled:
            bucket = opts.resolution
        elif opts.no_upscale:
            bucket = no_upscale_bucket(size, opts.max_area, opts.step, opts.max_reso)
            if min(bucket) < opts.step:
                raise DataError(
                    f"{name}: {size[0]}x{size[1]} px is too small for bucket_no_upscale, which "
                    f"needs both sides >= data.bucket_reso_steps ({opts.step}); enlarge or "
                    "remove the image, or set data.bucket_no_upscale=false"
                )
        else:
            bucket = nearest_bucket(size, self.buckets)
        resized = cover_size(size, bucket)
        return Geometry(bucket, resized, center_crop(resized, bucket))


# When a run says that images lose quality on their way to their bucket: enlarged more than 2x
# (an image less than half the bucket's side, blurry when trained at full size), or cropped
# to keep less than half of it (a panorama in a square bucket loses its sides).
UPSCALE_NOTE = 2.0
KEPT_AREA_NOTE = 0.5


def geometry_notes(images: Sequence[tuple[str, Size, Geometry]], examples: int = 3) -> list[str]:
    """What to tell the user, once per run, about ``(name, size, geometry)`` of every image:
    how many are enlarged more than :data:`UPSCALE_NOTE` times or keep less than
    :data:`KEPT_AREA_NOTE` of their area after the crop, with a few examples."""
    upscaled, cropped = [], []
    for name, size, g in images:
        scale = g.resized[0] / size[0]
        if scale > UPSCALE_NOTE:
            upscaled.append(f"{name} {size[0]}x{size[1]} -> {g.resized[0]}x{g.resized[1]}")
        kept = g.bucket[0] * g.bucket[1] / (g.resized[0] * g.resized[1])
        if kept < KEPT_AREA_NOTE:
            cropped.append(
                f"{name} {size[0]}x{size[1]} in bucket {g.bucket[0]}x{g.bucket[1]}: "
                f"{kept:.0%} kept"
            )
    notes, total = [], len(images)
    if upscaled:
        notes.append(
            f"{len(upscaled)} of {total} images are enlarged more than {UPSCALE_NOTE:g}x to "
            f"fill their bucket and will train blurry (e.g. {'; '.join(upscaled[:examples])}); "
            "use larger images, a lower data.resolution, or data.bucket_no_upscale=true"
        )
    if cropped:
        notes.append(
            f"{len(cropped)} of {total} images keep less than {KEPT_AREA_NOTE:.0%} of their area "
            f"after the crop to their bucket's aspect ratio (e.g. {'; '.join(cropped[:examples])}"
            "); crop them yourself, or widen the buckets (data.enable_bucket, "
            "data.min_bucket_reso / max_bucket_reso)"
        )
    return notes


def make_batches(
    bucket_of: Sequence[Hashable], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Batches of sample indices, each within one bucket, in a shuffled order.

    Samples are shuffled inside their bucket, cut into batches (the last one of a bucket may
    be short), and the batch order is shuffled: every draw comes from ``rng``.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, bucket in enumerate(bucket_of):
        groups.setdefault(bucket, []).append(index)
    batches: list[list[int]] = []
    for bucket in sorted(groups):
        indices = groups[bucket]
        rng.shuffle(indices)
        batches += [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches


def count_batches(bucket_of: Sequence[Hashable], batch_size: int) -> int:
    """How many batches :func:`make_batches` makes (the same for every epoch)."""
    counts: dict[Hashable, int] = {}
    for bucket in bucket_of:
        counts[bucket] = counts.get(bucket, 0) + 1
    return sum(math.ceil(n / batch_size) for n in counts.values())


def bucket_info(bucket_of: Sequence[Size], image_sizes: Sequence[Size]) -> dict:
    """kohya's ``ss_bucket_info``: samples per bucket and the mean aspect-ratio error."""
    counts: dict[Size, int] = {}
    for bucket in bucket_of:
        counts[bucket] = counts.get(bucket, 0) + 1
    errors = [abs(b[0] / b[1] - s[0] / s[1]) for b, s in zip(bucket_of, image_sizes)]
    return {
        "buckets": {
            i: {"resolution": list(b), "count": counts[b]} for i, b in enumerate(sorted(counts))
        },
        "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0,
    }

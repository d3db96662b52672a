"""The training data the loop consumes: batches of scaled latents, captions and loss weights.

``build_training_data`` scans the folders, assigns buckets, and, when the augmentations allow,
prepares every latent up front through the shared on-disk cache. ``TrainingData.batches``
then yields one epoch: batches within one bucket, in a seeded order, with captions processed
for that epoch. When pixels change at every step (colour jitter, random crop) or caching is
off, images are decoded (in ``num_workers`` processes) and encoded at each step instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data.augment import AugmentOptions, color_jitter, flip_for_step
from trainer.data.buckets import (
    BucketAssigner,
    Geometry,
    bucket_info,
    count_batches,
    geometry_notes,
    make_batches,
    random_crop,
)
from trainer.data.captions import caption_for_step, tag_frequency
from trainer.data.common import (
    is_int,
    is_number,
    raise_if,
    rng_for,
)
from trainer.data.images import apply_geometry, load_rgb, to_tensor
from trainer.data.kohya_layout import (
    ImageItem,
    Subset,
    balanced_reg_items,
    repeated_items,
    scan_dataset,
)
from trainer.data.latent_cache import LatentCache, LatentRequest, VaeEncoder, file_digest
from trainer.data.options import DataOptions
from trainer.device import to_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One entry of an epoch: an image, its (centre-crop) geometry and its loss weight."""

    item: ImageItem
    geometry: Geometry
    loss_weight: float


def build_training_data(
    data_cfg: DataOptions | Any,
    vae: torch.nn.Module,
    cache_dir: str | Path | None,
    *,
    batch_size: int,
    seed: int,
    prior_loss_weight: float,
    device: str | torch.device = "cpu",
    vae_batch_size: int = 4,
) -> TrainingData:
    """Scan the data, assign buckets and (when possible) prepare every latent.

    Raises ConfigError for bad keys or arguments and DataError for unusable folders/images.
    """
    options = data_cfg if isinstance(data_cfg, DataOptions) else DataOptions.from_config(data_cfg)
    problems = []
    if not (is_int(batch_size) and batch_size >= 1):
        problems.append(f"batch_size: {batch_size!r} must be an integer >= 1")
    if not is_int(seed):
        problems.append(f"seed: {seed!r} must be an integer")
    if not (is_number(prior_loss_weight) and prior_loss_weight >= 0):
        problems.append(f"prior_loss_weight: {prior_loss_weight!r} must be a number >= 0")
    if options.caches_latents and cache_dir is None:
        problems.append("cache_dir: None, but data.cache_latents needs a cache folder")
    raise_if(problems)

    train = scan_dataset(options.dir, options.caption_extension)
    reg = (
        scan_dataset(options.reg_dir, options.caption_extension, is_reg=True)
        if options.reg_dir is not None
        else []
    )
    samples = _make_samples(train, reg, BucketAssigner(options.buckets), prior_loss_weight)
    data = TrainingData(options, samples, train, reg, VaeEncoder(vae), batch_size, seed, device)
    if options.caches_latents:
        data.prepare_latents(LatentCache(cache_dir, data.encoder, vae_batch_size))
    elif options.cache_latents:
        log.info("latent caching is off: color_aug/random_crop change the pixels at every step")
    return data


def _make_samples(
    train: list[Subset], reg: list[Subset], assigner: BucketAssigner, prior_loss_weight: float
) -> list[Sample]:
    train_items = repeated_items(train)
    reg_items = balanced_reg_items(reg, len(train_items))
    geometries: dict[Path, Geometry] = {}
    samples = []
    weighted = [(i, 1.0) for i in train_items] + [(i, float(prior_loss_weight)) for i in reg_items]
    images = []
    for item, weight in weighted:
        if item.path not in geometries:
            geometries[item.path] = assigner.geometry(item.size, repr(str(item.path)))
            images.append((item.path.name, item.size, geometries[item.path]))
        samples.append(Sample(item, geometries[item.path], weight))
    for note in geometry_notes(images):
        log.warning("%s", note)
    return samples


class TrainingData:
    """One data set for one run; see :func:`build_training_data`."""

    def __init__(
        self,
        options: DataOptions,
        samples: list[Sample],
        train: list[Subset],
        reg: list[Subset],
        encoder: VaeEncoder,
        batch_size: int,
        seed: int,
        device: str | torch.device,
    ):
        self.options = options
        self.samples = samples
        self.encoder = encoder
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.scaling_factor = float(encoder.vae.config.scaling_factor)
        # Flux's VAE centres its latents before scaling (diffusers: ``shift_factor``); SD's
        # VAEs have none.
        self.shift_factor = float(getattr(encoder.vae.config, "shift_factor", None) or 0.0)
        self._train = [s for s in train if s.images]
        self._reg = [s for s in reg if s.images]
        self._bucket_of = [s.geometry.bucket for s in samples]
        self._latents: dict[tuple[Path, bool], torch.Tensor] | None = None
        self._cache: LatentCache | None = None

    # -- what kohya's metadata and the loop's plan need ---------------------------------------
    @property
    def num_train_images(self) -> int:
        return sum(len(s.images) for s in self._train)

    @property
    def num_reg_images(self) -> int:
        return sum(len(s.images) for s in self._reg)

    @property
    def samples_per_epoch(self) -> int:
        return len(self.samples)

    @property
    def batches_per_epoch(self) -> int:
        return count_batches(self._bucket_of, self.batch_size)

    @property
    def resolution(self) -> tuple[int, int]:
        return self.options.buckets.resolution

    @property
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        items = [item for s in self._train for item in s.images]
        return tag_frequency(items, self.options.captions.separator)

    @property
    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        return _dirs_info(self._train)

    @property
    def reg_dataset_dirs(self) -> dict[str, dict[str, int]]:
        return _dirs_info(self._reg)

    @property
    def bucket_info(self) -> dict:
        return bucket_info(self._bucket_of, [s.item.size for s in self.samples])

    @property
    def caches_latents(self) -> bool:
        return self._latents is not None

    @property
    def cache_stats(self) -> dict[str, int]:
        return self._cache.stats if self._cache else {"hits": 0, "misses": 0}

    @property
    def vae_encodes(self) -> int:
        return self.encoder.encodes

    # -- latents ------------------------------------------------------------------------------
    def prepare_latents(self, cache: LatentCache) -> None:
        """Fetch (or encode) the latent of every image, both orientations with flip_aug."""
        flips = (False, True) if self.options.augment.flip else (False,)
        digests: dict[Path, str] = {}
        requests: dict[tuple[Path, bool], LatentRequest] = {}
        for sample in self.samples:
            path = sample.item.path
            if path not in digests:
                digests[path] = file_digest(path)
            for flip in flips:
                requests[(path, flip)] = LatentRequest(path, digests[path], sample.geometry, flip)
        fetched = cache.fetch(requests.values())
        self._latents = {ident: fetched[cache.key(r)] for ident, r in requests.items()}
        self._cache = cache

    # -- one epoch ----------------------------------------------------------------------------
    def batch_order(self, epoch: int) -> list[list[int]]:
        """The sample indices of each batch of ``epoch``, in order."""
        return make_batches(self._bucket_of, self.batch_size, rng_for("batches", self.seed, epoch))

    def batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """The batches of ``epoch`` (0-based): latents scaled by the VAE's scaling factor."""
        order = self.batch_order(epoch)
        latents = (
            self._cached_batches(order, epoch)
            if self.caches_latents
            else self._encoded_batches(order, epoch)
        )
        for indices, batch_latents in zip(order, latents):
            picked = [self.samples[i] for i in indices]
            # Pinned, non-blocking copies (to_device): the host never waits for the GPU here.
            weights = torch.tensor([s.loss_weight for s in picked], dtype=torch.float32)
            is_reg = torch.tensor([s.item.is_reg for s in picked], dtype=torch.bool)
            yield {
                "latents": (
                    (to_device(batch_latents, self.device) - self.shift_factor)
                    * self.scaling_factor
                ).float(),
                "captions": [
                    caption_for_step(s.item.caption, self.options.captions, self.seed, epoch, i)
                    for s, i in zip(picked, indices)
                ],
                "loss_weights": to_device(weights, self.device),
                "is_reg": to_device(is_reg, self.device),
                "paths": [str(s.item.path) for s in picked],
                # Per sample, for size conditioning (SDXL's time ids): the image's own size
                # and its bucket, both (width, height), and whether it is mirrored this epoch.
                "original_sizes": [s.item.size for s in picked],
                "target_sizes": [s.geometry.bucket for s in picked],
                "flips": [self._flip(epoch, i) for i in indices],
            }

    def _flip(self, epoch: int, index: int) -> bool:
        return self.options.augment.flip and flip_for_step(self.seed, epoch, index)

    def _cached_batches(self, order: list[list[int]], epoch: int) -> Iterator[torch.Tensor]:
        assert self._latents is not None
        for indices in order:
            yield torch.stack(
                [self._latents[(self.samples[i].item.path, self._flip(epoch, i))] for i in indices]
            )

    def _encoded_batches(self, order: list[list[int]], epoch: int) -> Iterator[torch.Tensor]:
        pixels = StepPixels(self.samples, self.options.augment, self.seed, epoch)
        loader = DataLoader(
            pixels,
            batch_sampler=order,
            num_workers=self.options.num_workers,
            collate_fn=torch.stack,
        )
        for batch in loader:
            yield self.encoder(batch)


class StepPixels(Dataset):
    """The pixels of each sample for one epoch, with that epoch's flip, crop and colour."""

    def __init__(self, samples: list[Sample], augment: AugmentOptions, seed: int, epoch: int):
        self.samples = samples
        self.augment = augment
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        sample = self.samples[index]
        geometry = sample.geometry
        if self.augment.random_crop:
            rng = rng_for("crop", self.seed, self.epoch, index)
            geometry = geometry.with_crop(random_crop(geometry.resized, geometry.bucket, rng))
        flip = self.augment.flip and flip_for_step(self.seed, self.epoch, index)
        image = apply_geometry(load_rgb(sample.item.path), geometry, flip)
        if self.augment.color:
            image = color_jitter(image, rng_for("color", self.seed, self.epoch, index))
        return to_tensor(image)


def _dirs_info(subsets: list[Subset]) -> dict[str, dict[str, int]]:
    """kohya's ``ss_dataset_dirs``: per folder, its repeats and image count."""
    return {s.name: {"n_repeats": s.n_repeats, "img_count": len(s.images)} for s in subsets}

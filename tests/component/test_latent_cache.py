"""The content-addressed latent cache, with the tiny model's VAE."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file
from skimage import data

from trainer.data.dataset import build_training_data
from trainer.data.images import apply_geometry, load_rgb, to_tensor
from trainer.data.latent_cache import (
    LatentCache,
    LatentRequest,
    VaeEncoder,
    file_digest,
    vae_identity,
)
from trainer.models.tiny import build_tiny_components

SIZES = {"cat.png": (96, 64), "coffee.png": (64, 96), "rocket.png": (80, 80)}


@pytest.fixture(scope="module")
def vae():
    return build_tiny_components(seed=0).vae


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "img" / "2_thing"
    folder.mkdir(parents=True)
    for (name, size), photo in zip(SIZES.items(), (data.chelsea(), data.coffee(), data.rocket())):
        Image.fromarray(photo).resize(size).save(folder / name)
    return tmp_path / "img"


def data_cfg(root: Path, **overrides):
    base = dict(
        dir=str(root),
        reg_dir=None,
        caption_extension=".txt",
        resolution=64,
        enable_bucket=True,
        min_bucket_reso=32,
        max_bucket_reso=128,
        bucket_reso_steps=8,
        bucket_no_upscale=False,
        shuffle_caption=False,
        keep_tokens=0,
        caption_separator=",",
        caption_dropout_rate=0.0,
        caption_tag_dropout_rate=0.0,
        max_token_length=75,
        flip_aug=False,
        color_aug=False,
        random_crop=False,
        cache_latents=True,
        num_workers=0,
    )
    return OmegaConf.create({**base, **overrides})


def build(root, vae, cache_dir, **overrides):
    return build_training_data(
        data_cfg(root, **overrides), vae, cache_dir, batch_size=2, seed=0, prior_loss_weight=1.0
    )


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "latents").rglob("*.safetensors"))


def test_second_build_hits_every_entry_and_encodes_nothing(image_dir, vae, tmp_path):
    cache_dir = tmp_path / "cache"
    first = build(image_dir, vae, cache_dir)
    assert first.cache_stats == {"hits": 0, "misses": 3} and first.vae_encodes == 3
    assert len(cache_files(cache_dir)) == 3
    assert not list((cache_dir / "latents").rglob("*.tmp"))  # atomic writes leave nothing

    second = build(image_dir, vae, cache_dir)
    assert second.cache_stats == {"hits": len(cache_files(cache_dir)), "misses": 0}
    assert second.vae_encodes == 0
    for a, b in zip(first.batches(0), second.batches(0), strict=True):
        assert a["paths"] == b["paths"] and torch.equal(a["latents"], b["latents"])


def test_misses_are_encoded_in_batches(tmp_path, vae):
    folder = tmp_path / "img" / "1_same"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.roll(data.chelsea(), 20 * i, axis=1)).resize((64, 64)).save(
            folder / f"{i}.png"
        )
    calls = []
    hook = vae.encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        build_training_data(
            data_cfg(tmp_path / "img"),
            vae,
            tmp_path / "cache",
            batch_size=1,
            seed=0,
            prior_loss_weight=1.0,
            vae_batch_size=2,
        )
    finally:
        hook.remove()
    assert calls == [2, 2, 1]


def test_flip_aug_caches_both_orientations(image_dir, vae, tmp_path):
    cache_dir = tmp_path / "cache"
    plain = build(image_dir, vae, cache_dir)
    assert plain.cache_stats == {"hits": 0, "misses": 3}
    flipped = build(image_dir, vae, cache_dir, flip_aug=True)
    # The unflipped latents are reused; only the mirrored ones are new.
    assert flipped.cache_stats == {"hits": 3, "misses": 3} and flipped.vae_encodes == 3
    assert len(cache_files(cache_dir)) == 6
    assert build(image_dir, vae, cache_dir, flip_aug=True).cache_stats == {"hits": 6, "misses": 0}


def test_a_changed_image_misses_alone(image_dir, vae, tmp_path):
    cache_dir = tmp_path / "cache"
    build(image_dir, vae, cache_dir)
    path = image_dir / "2_thing" / "coffee.png"
    pixels = np.array(Image.open(path))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)
    assert build(image_dir, vae, cache_dir).cache_stats == {"hits": 2, "misses": 1}


def test_a_different_vae_misses(image_dir, vae, tmp_path):
    cache_dir = tmp_path / "cache"
    build(image_dir, vae, cache_dir)
    other = build_tiny_components(seed=1).vae
    assert build(image_dir, other, cache_dir).cache_stats == {"hits": 0, "misses": 3}
    assert len(cache_files(cache_dir)) == 6


def test_vae_identity_follows_weights_dtype_and_config(vae):
    identity = vae_identity(vae)
    assert len(identity) == 64 and vae_identity(vae) == identity
    assert vae_identity(copy.deepcopy(vae)) == identity
    assert vae_identity(copy.deepcopy(vae).to(torch.float16)) != identity
    assert vae_identity(build_tiny_components(seed=1).vae) != identity
    tweaked = copy.deepcopy(vae)
    tweaked.register_to_config(scaling_factor=0.5)
    assert vae_identity(tweaked) != identity


def test_cached_latent_equals_a_fresh_encode(image_dir, vae, tmp_path):
    cache_dir = tmp_path / "cache"
    td = build(image_dir, vae, cache_dir, flip_aug=True)
    sample = next(s for s in td.samples if s.item.path.name == "cat.png")
    geometry = sample.geometry
    assert geometry.bucket == (80, 48)
    cache = LatentCache(cache_dir, VaeEncoder(vae))
    for flip in (False, True):
        request = LatentRequest(sample.item.path, file_digest(sample.item.path), geometry, flip)
        stored = load_file(cache.path_for(cache.key(request)))["latent"]
        pixels = to_tensor(apply_geometry(load_rgb(sample.item.path), geometry, flip))
        fresh = VaeEncoder(vae)(pixels[None])[0]
        assert stored.shape == (4, 6, 10)
        torch.testing.assert_close(stored, fresh, rtol=1e-5, atol=1e-5)
        posterior = vae.encode(pixels[None]).latent_dist
        torch.testing.assert_close(stored, posterior.mean[0].detach(), rtol=1e-5, atol=1e-5)


def test_an_unreadable_entry_is_encoded_again(image_dir, vae, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    build(image_dir, vae, cache_dir)
    cache_files(cache_dir)[0].write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING, logger="trainer.data.latent_cache"):
        td = build(image_dir, vae, cache_dir)
    assert td.cache_stats == {"hits": 2, "misses": 1}
    assert "unreadable latent cache entry" in caplog.text
    assert build(image_dir, vae, cache_dir).cache_stats == {"hits": 3, "misses": 0}


@pytest.mark.parametrize(
    "overrides", [{"color_aug": True}, {"random_crop": True}, {"cache_latents": False}]
)
def test_changing_pixels_or_switching_off_disables_caching(image_dir, vae, tmp_path, overrides):
    cache_dir = tmp_path / "cache"
    td = build(image_dir, vae, cache_dir, **overrides)
    assert not td.caches_latents
    assert td.cache_stats == {"hits": 0, "misses": 0} and td.vae_encodes == 0
    assert not (cache_dir / "latents").exists()
    batches = list(td.batches(0))
    # Every sample is encoded at its step.
    assert td.vae_encodes == td.samples_per_epoch == 6
    assert sum(len(b["paths"]) for b in batches) == 6

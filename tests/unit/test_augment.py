"""Augmentations (flip, colour jitter, random crop) and the image -> tensor preprocessing."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from trainer.data.augment import AugmentOptions, color_jitter, flip_for_step
from trainer.data.buckets import Geometry, random_crop
from trainer.data.images import apply_geometry, load_rgb, to_tensor
from trainer.errors import ConfigError


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(data.chelsea()).resize((90, 60))


def test_options_and_whether_pixels_vary():
    cfg = SimpleNamespace(flip_aug=True, color_aug=False, random_crop=False)
    options = AugmentOptions.from_config(cfg)
    assert options == AugmentOptions(flip=True) and not options.pixels_vary
    assert AugmentOptions(color=True).pixels_vary and AugmentOptions(random_crop=True).pixels_vary
    with pytest.raises(ConfigError, match="data.color_aug: 1 must be true or false"):
        AugmentOptions.from_config(SimpleNamespace(flip_aug=True, color_aug=1, random_crop=False))


def test_flip_is_a_seeded_coin():
    flips = [flip_for_step(5, epoch, i) for epoch in range(4) for i in range(500)]
    assert 0.45 < sum(flips) / len(flips) < 0.55
    assert flips == [flip_for_step(5, epoch, i) for epoch in range(4) for i in range(500)]
    assert flips != [flip_for_step(6, epoch, i) for epoch in range(4) for i in range(500)]


def test_color_jitter_is_small_seeded_and_keeps_the_size(cat):
    jittered = color_jitter(cat, random.Random(1))
    assert jittered.size == cat.size and jittered.mode == "RGB"
    diff = np.abs(np.asarray(jittered, dtype=float) - np.asarray(cat, dtype=float))
    assert 0.5 < diff.mean() < 40
    again = color_jitter(cat, random.Random(1))
    assert np.array_equal(np.asarray(jittered), np.asarray(again))
    other = color_jitter(cat, random.Random(2))
    assert not np.array_equal(np.asarray(jittered), np.asarray(other))


def test_random_crop_stays_inside_and_varies():
    rng = random.Random(0)
    offsets = [random_crop((100, 60), (64, 48), rng) for _ in range(200)]
    assert all(0 <= x <= 36 and 0 <= y <= 12 for x, y in offsets)
    assert len(set(offsets)) > 50
    assert random_crop((64, 48), (64, 48), rng) == (0, 0)


def test_apply_geometry_resizes_crops_and_flips(cat):
    geometry = Geometry(bucket=(64, 40), resized=(66, 44), crop=(1, 2))
    out = apply_geometry(cat, geometry)
    assert out.size == (64, 40)
    expected = cat.resize((66, 44), Image.Resampling.LANCZOS).crop((1, 2, 65, 42))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    flipped = apply_geometry(cat, geometry, flip=True)
    assert np.array_equal(np.asarray(flipped), np.asarray(out)[:, ::-1])


def test_to_tensor_is_chw_in_minus_one_to_one():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (0, 127, 255)
    tensor = to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([-1.0, 127 / 127.5 - 1, 1.0])
    assert tensor[:, 1, 2].tolist() == [-1.0, -1.0, -1.0]


def test_load_rgb_puts_transparency_on_white_and_applies_exif(tmp_path):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent except one pixel
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = np.asarray(load_rgb(tmp_path / "a.png"))
    assert loaded[0, 0].tolist() == [255, 0, 0] and loaded[1, 1].tolist() == [255, 255, 255]

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 10), "blue").save(tmp_path / "b.jpg", exif=exif)
    assert load_rgb(tmp_path / "b.jpg").size == (10, 30)

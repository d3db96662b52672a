"""build_training_data: the batches the training loop gets, on the bundled sample set."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from trainer.data.dataset import build_training_data
from trainer.data.latent_cache import LatentCache, LatentRequest, VaeEncoder, file_digest
from trainer.errors import ConfigError, DataError
from trainer.models.tiny import build_tiny_components

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample" / "img"
SCALE = 0.18215


@pytest.fixture(scope="module")
def vae():
    return build_tiny_components(seed=0).vae


def data_cfg(root: Path = SAMPLE_DIR, **overrides):
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


def build(vae, cache_dir, cfg=None, batch_size=2, seed=0, prior_loss_weight=1.0):
    return build_training_data(
        cfg if cfg is not None else data_cfg(),
        vae,
        cache_dir,
        batch_size=batch_size,
        seed=seed,
        prior_loss_weight=prior_loss_weight,
    )


def make_images(folder: Path, n: int, size=(64, 64), offset=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(offset + i)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{offset + i}.png")


def test_sample_set_in_batches(vae, tmp_path):
    td = build(vae, tmp_path / "cache")
    assert (td.num_train_images, td.num_reg_images) == (6, 0)
    assert td.samples_per_epoch == 30 and td.resolution == (64, 64)
    assert td.dataset_dirs == {"5_chelsea cat": {"n_repeats": 5, "img_count": 6}}
    assert td.tag_frequency["5_chelsea cat"]["chelsea cat"] == 6
    assert len(td.bucket_info["buckets"]) >= 4  # the crops use several aspect ratios
    batches = list(td.batches(0))
    assert len(batches) == td.batches_per_epoch
    assert Counter(p for b in batches for p in b["paths"]) == {
        str(p): 5 for p in sorted((SAMPLE_DIR / "5_chelsea cat").glob("*.jpg"))
    }
    for batch in batches:
        n = len(batch["paths"])
        assert 1 <= n <= 2 and batch["latents"].dtype == torch.float32
        assert batch["latents"].shape[:2] == (n, 4)
        h, w = batch["latents"].shape[2:]
        assert w * 8 * h * 8 <= 64 * 64 and 32 <= w * 8 <= 128 and 32 <= h * 8 <= 128
        assert all(c.startswith("chelsea cat, ") for c in batch["captions"])
        assert batch["loss_weights"].tolist() == [1.0] * n
        assert batch["is_reg"].tolist() == [False] * n


def test_latents_are_scaled_cached_means(vae, tmp_path):
    td = build(vae, tmp_path / "cache")
    batch = next(td.batches(0))
    sample = next(s for s in td.samples if str(s.item.path) == batch["paths"][0])
    cache = LatentCache(tmp_path / "cache", VaeEncoder(vae))
    request = LatentRequest(
        sample.item.path, file_digest(sample.item.path), sample.geometry, flip=False
    )
    stored = load_file(cache.path_for(cache.key(request)))["latent"]
    torch.testing.assert_close(batch["latents"][0], stored * SCALE)


def test_same_seed_same_batches_other_seed_or_epoch_other_order(vae, tmp_path):
    cfg = data_cfg(
        shuffle_caption=True, keep_tokens=1, flip_aug=True, caption_tag_dropout_rate=0.2
    )

    def epoch(td, e):
        return [(b["paths"], b["captions"], b["latents"]) for b in td.batches(e)]

    a = epoch(build(vae, tmp_path / "cache", cfg, seed=3), 1)
    b = epoch(build(vae, tmp_path / "cache", cfg, seed=3), 1)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(a, b, strict=True))
    td = build(vae, tmp_path / "cache", cfg, seed=4)
    assert [x[0] for x in epoch(td, 1)] != [x[0] for x in a]
    assert [x[0] for x in epoch(td, 2)] != [x[0] for x in epoch(td, 1)]
    # Kept first tag, shuffled rest.
    assert all(c.split(", ")[0] == "chelsea cat" for x in a for c in x[1])


def test_flip_aug_mirrors_some_samples(vae, tmp_path):
    td = build(vae, tmp_path / "cache", data_cfg(flip_aug=True), batch_size=1)
    seen: dict[str, list[torch.Tensor]] = {}
    for batch in td.batches(0):
        seen.setdefault(batch["paths"][0], []).append(batch["latents"][0])
    # Each image is drawn 5 times: over the set, both orientations appear.
    distinct = [len({t.sum().item() for t in ts}) for ts in seen.values()]
    assert max(distinct) == 2 and all(d in (1, 2) for d in distinct)


def test_caption_dropout_one_empties_every_caption(vae, tmp_path):
    td = build(vae, tmp_path / "cache", data_cfg(caption_dropout_rate=1.0))
    assert {c for b in td.batches(0) for c in b["captions"]} == {""}


def test_without_buckets_every_latent_is_square(vae, tmp_path):
    td = build(vae, tmp_path / "cache", data_cfg(enable_bucket=False), batch_size=4)
    shapes = {tuple(b["latents"].shape[1:]) for b in td.batches(0)}
    assert shapes == {(4, 8, 8)} and td.batches_per_epoch == 8  # 30 samples / 4


def test_encoding_per_step_matches_the_cache(vae, tmp_path):
    cached = build(vae, tmp_path / "cache", batch_size=1)
    live = build(vae, None, data_cfg(cache_latents=False), batch_size=1)
    assert live.vae_encodes == 0
    for a, b in zip(cached.batches(0), live.batches(0), strict=True):
        assert a["paths"] == b["paths"]
        torch.testing.assert_close(a["latents"], b["latents"], rtol=1e-4, atol=1e-5)
    assert live.vae_encodes == 30


def test_color_aug_and_random_crop_are_seeded(vae, tmp_path):
    cfg = data_cfg(color_aug=True, random_crop=True, flip_aug=True)
    runs = [[b["latents"] for b in build(vae, None, cfg, seed=9).batches(0)] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*runs, strict=True))


def test_workers_give_the_same_batches(vae, tmp_path):
    cfg = data_cfg(color_aug=True)
    inline = list(build(vae, None, cfg).batches(0))
    workers = list(build(vae, None, data_cfg(color_aug=True, num_workers=1)).batches(0))
    for a, b in zip(inline, workers, strict=True):
        assert a["paths"] == b["paths"]
        torch.testing.assert_close(a["latents"], b["latents"])


def test_reg_images_balance_and_weigh(vae, tmp_path, caplog):
    make_images(tmp_path / "train" / "3_sks cat", 2)
    make_images(tmp_path / "reg" / "1_cat", 4, offset=10)
    cfg = data_cfg(tmp_path / "train", reg_dir=str(tmp_path / "reg"))
    td = build(vae, tmp_path / "cache", cfg, batch_size=3, prior_loss_weight=0.5)
    assert (td.num_train_images, td.num_reg_images, td.samples_per_epoch) == (2, 4, 12)
    assert td.dataset_dirs == {"3_sks cat": {"n_repeats": 3, "img_count": 2}}
    assert td.reg_dataset_dirs == {"1_cat": {"n_repeats": 1, "img_count": 4}}
    weights: Counter = Counter()
    for batch in td.batches(0):
        for path, weight, reg in zip(batch["paths"], batch["loss_weights"], batch["is_reg"]):
            assert reg.item() == ("/reg/" in path) and weight.item() == (0.5 if reg else 1.0)
            weights[Path(path).name] += 1
    # 6 train samples; the 4 reg images cycled to 6 samples.
    assert weights == {"0.png": 3, "1.png": 3, "10.png": 2, "11.png": 2, "12.png": 1, "13.png": 1}
    # Captions fall back to the class tokens.
    assert {c for b in td.batches(0) for c in b["captions"]} == {"sks cat", "cat"}


def test_bad_config_lists_every_key(vae, tmp_path):
    cfg = data_cfg(keep_tokens=-1, bucket_reso_steps=12, flip_aug="yes", num_workers=-2)
    with pytest.raises(ConfigError) as info:
        build(vae, tmp_path / "cache", cfg, batch_size=0)
    problems = "\n".join(info.value.problems)
    for key in ("data.keep_tokens", "data.bucket_reso_steps", "data.flip_aug", "data.num_workers"):
        assert key in problems
    with pytest.raises(ConfigError, match="batch_size: 0"):
        build(vae, tmp_path / "cache", batch_size=0)


def test_missing_data_dir_and_too_small_images_are_named(vae, tmp_path):
    with pytest.raises(DataError) as info:
        build(vae, tmp_path / "cache", data_cfg(tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(info.value)
    make_images(tmp_path / "small" / "1_dot", 1, size=(6, 40))
    with pytest.raises(DataError, match=r"0\.png.*6x40"):
        build(vae, tmp_path / "cache", data_cfg(tmp_path / "small", bucket_no_upscale=True))


def test_plain_object_config_and_composed_config(vae, tmp_path, compose, caplog):
    plain = SimpleNamespace(**OmegaConf.to_container(data_cfg()))
    assert build(vae, tmp_path / "cache", plain).samples_per_epoch == 30
    composed = compose().data
    assert Path(composed.dir) == SAMPLE_DIR
    with caplog.at_level(logging.INFO, logger="trainer.data.latent_cache"):
        td = build(vae, tmp_path / "cache", composed)
    assert td.cache_stats == {"hits": 6, "misses": 0} and "6 hits, 0 misses" in caplog.text


def test_small_and_heavily_cropped_images_are_logged_once_with_counts(tmp_path, caplog):
    from PIL import Image

    from trainer.data.buckets import BucketAssigner, BucketOptions
    from trainer.data.dataset import _make_samples
    from trainer.data.kohya_layout import scan_dataset

    folder = tmp_path / "5_cat"
    folder.mkdir()
    for i, size in enumerate([(16, 16), (20, 16), (64, 64), (192, 64)]):
        Image.new("RGB", size, (i, i, i)).save(folder / f"{i}.png")
    assigner = BucketAssigner(BucketOptions((64, 64), enabled=False))
    with caplog.at_level("WARNING", logger="trainer.data.dataset"):
        samples = _make_samples(scan_dataset(tmp_path), [], assigner, 1.0)
    assert len(samples) == 20
    messages = [r.getMessage() for r in caplog.records if r.name == "trainer.data.dataset"]
    assert len(messages) == 2  # once per run, not once per sample (5 repeats each)
    assert messages[0].startswith("2 of 4 images are enlarged more than 2x")
    assert messages[1].startswith("1 of 4 images keep less than 50% of their area")
    assert "3.png 192x64 in bucket 64x64: 33% kept" in messages[1]

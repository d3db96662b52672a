"""Aspect-ratio buckets: the bucket set, image assignment, no-upscale, batching."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from trainer.data.buckets import (
    BucketAssigner,
    BucketOptions,
    count_batches,
    cover_size,
    geometry_notes,
    make_batches,
    make_buckets,
    nearest_bucket,
)
from trainer.errors import ConfigError, DataError

# (resolution, min, max, step) of SD 1.5 in kohya's usual settings, and of the tiny model.
GEOMETRIES = [(512, 256, 1024, 64), (512, 320, 768, 64), (64, 32, 128, 8)]


def sizes(n: int = 300, seed: int = 0, low: int = 16) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(low, 2000), rng.randint(low, 2000)) for _ in range(n)]


@pytest.mark.parametrize(("res", "lo", "hi", "step"), GEOMETRIES)
def test_bucket_set_properties(res, lo, hi, step):
    buckets = make_buckets(res, lo, hi, step)
    assert buckets == sorted(set(buckets))
    assert (res, res) in buckets
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert lo <= w <= hi and lo <= h <= hi
        assert w * h <= res * res
        assert (h, w) in buckets
    # No bucket could grow by a step on both sides: each uses as much of the area as it can.
    for w, h in buckets:
        wider_fits = (w + step) * h <= res * res and w + step <= hi
        taller_fits = w * (h + step) <= res * res and h + step <= hi
        assert not (wider_fits and taller_fits)


def test_sd15_bucket_set_has_the_familiar_shapes():
    buckets = make_buckets(512, 256, 1024, 64)
    for bucket in [(512, 512), (576, 448), (640, 384), (768, 320), (1024, 256), (256, 1024)]:
        assert bucket in buckets
    assert (1024, 320) not in buckets


@pytest.mark.parametrize(("res", "lo", "hi", "step"), GEOMETRIES)
def test_images_go_to_the_closest_aspect_ratio(res, lo, hi, step):
    buckets = make_buckets(res, lo, hi, step)
    for size in sizes():
        chosen = nearest_bucket(size, buckets)
        error = abs(math.log(chosen[0] / chosen[1]) - math.log(size[0] / size[1]))
        best = min(abs(math.log(b[0] / b[1]) - math.log(size[0] / size[1])) for b in buckets)
        assert error == pytest.approx(best, abs=1e-9)
    assert nearest_bucket((300, 300), buckets) == (res, res)


def test_geometry_covers_the_bucket_and_centre_crops():
    assigner = BucketAssigner(BucketOptions((512, 512), True, 256, 1024, 64))
    geometry = assigner.geometry((1000, 500))
    assert geometry.bucket == (704, 320)
    assert geometry.resized == (704, 352)  # aspect ratio kept, covers the bucket
    assert geometry.crop == (0, 16)
    for size in sizes():
        g = assigner.geometry(size)
        assert g.resized[0] >= g.bucket[0] and g.resized[1] >= g.bucket[1]
        # One side fits exactly; the other is the aspect-ratio-preserving size (rounded).
        assert g.resized[0] == g.bucket[0] or g.resized[1] == g.bucket[1]
        assert g.resized[0] / g.resized[1] == pytest.approx(size[0] / size[1], rel=0.02)


def test_no_upscale_never_enlarges():
    options = BucketOptions((512, 512), True, 256, 1024, 64, no_upscale=True)
    assigner = BucketAssigner(options)
    # Smaller than the area: its own size rounded down to the step.
    assert assigner.geometry((300, 200)).bucket == (256, 192)
    assert assigner.geometry((300, 200)).resized == (288, 192)  # shrunk to cover, then cropped
    for size in sizes(low=64) + [(2000, 64), (64, 2000), (130, 70)]:
        g = assigner.geometry(size)
        assert g.bucket[0] <= size[0] and g.bucket[1] <= size[1]
        assert g.resized[0] <= size[0] and g.resized[1] <= size[1]
        assert g.bucket[0] % 64 == 0 and g.bucket[1] % 64 == 0
        assert g.bucket[0] * g.bucket[1] <= 512 * 512
        assert max(g.bucket) <= 1024
        if size[0] * size[1] <= 512 * 512:
            assert g.bucket == (min(1024, size[0] // 64 * 64), min(1024, size[1] // 64 * 64))


def test_no_upscale_rejects_images_smaller_than_a_step():
    assigner = BucketAssigner(BucketOptions((512, 512), True, 256, 1024, 64, no_upscale=True))
    with pytest.raises(DataError, match="tiny.png.*40x300"):
        assigner.geometry((40, 300), "tiny.png")


def test_without_buckets_every_image_gets_the_resolution():
    assigner = BucketAssigner(
        BucketOptions((64, 64), enabled=False, min_reso=32, max_reso=128, step=8)
    )
    assert {assigner.geometry(s).bucket for s in sizes(50)} == {(64, 64)}


def test_cover_size_keeps_aspect_ratio():
    assert cover_size((100, 50), (64, 64)) == (128, 64)
    assert cover_size((64, 64), (64, 64)) == (64, 64)


def test_batches_stay_in_one_bucket_and_are_seeded():
    bucket_of = [(64, 64)] * 7 + [(80, 48)] * 5 + [(48, 80)] * 2
    batches = make_batches(bucket_of, 3, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(len(bucket_of)))
    assert all(len({bucket_of[i] for i in b}) == 1 and 1 <= len(b) <= 3 for b in batches)
    assert len(batches) == count_batches(bucket_of, 3) == 3 + 2 + 1
    assert make_batches(bucket_of, 3, random.Random(1)) == batches
    orders = {str(make_batches(bucket_of, 3, random.Random(s))) for s in range(10)}
    assert len(orders) > 1


def test_options_from_config_and_their_checks():
    cfg = SimpleNamespace(
        resolution=64,
        enable_bucket=True,
        min_bucket_reso=32,
        max_bucket_reso=128,
        bucket_reso_steps=8,
        bucket_no_upscale=False,
    )
    options = BucketOptions.from_config(cfg)
    assert options.resolution == (64, 64) and options.max_area == 4096
    cfg.resolution = [64, 48]
    assert BucketOptions.from_config(cfg).resolution == (64, 48)
    cfg.resolution, cfg.bucket_reso_steps, cfg.min_bucket_reso = 512, 12, 30
    with pytest.raises(ConfigError) as info:
        BucketOptions.from_config(cfg)
    problems = "\n".join(info.value.problems)
    assert "data.bucket_reso_steps: 12 must be a multiple of 8" in problems
    assert "data.min_bucket_reso: 30" in problems
    assert "data.resolution: (512, 512) must lie within" in problems
    cfg.enable_bucket = "no"
    with pytest.raises(ConfigError, match="data.enable_bucket: 'no' must be true or false"):
        BucketOptions.from_config(cfg)


def test_images_enlarged_or_cropped_much_are_counted_with_examples():
    sd15 = BucketAssigner(BucketOptions((512, 512), min_reso=256, max_reso=1024, step=64))
    square = BucketAssigner(BucketOptions((512, 512), enabled=False))
    images = [
        ("ok.png", (600, 600), sd15.geometry((600, 600))),
        ("half.png", (256, 256), sd15.geometry((256, 256))),  # exactly 2x: not noted
        ("tiny.png", (200, 200), sd15.geometry((200, 200))),  # 2.56x
        ("icon.png", (64, 48), sd15.geometry((64, 48))),
        ("pano.png", (1500, 500), square.geometry((1500, 500))),  # a third kept
        ("wide.png", (1024, 600), square.geometry((1024, 600))),  # 59% kept: not noted
    ]
    enlarged, cropped = geometry_notes(images, examples=1)
    assert enlarged.startswith("2 of 6 images are enlarged more than 2x")
    assert "tiny.png 200x200 -> 512x512" in enlarged and "icon.png" not in enlarged
    assert cropped.startswith("1 of 6 images keep less than 50% of their area")
    assert "pano.png 1500x500 in bucket 512x512: 33% kept" in cropped
    assert geometry_notes(images[:2]) == []


def test_a_huge_max_bucket_reso_adds_nothing_and_walks_only_possible_widths(monkeypatch):
    import trainer.data.buckets as buckets

    walked = []

    def recording_range(*args):
        walked.append(len(range(*args)))
        return range(*args)

    monkeypatch.setattr(buckets, "range", recording_range, raising=False)
    huge = make_buckets(512, 256, 10**7, 64)
    assert walked == [13]  # widths 256..1024: wider ones leave no height >= 256
    assert huge == make_buckets(512, 256, 1024, 64)

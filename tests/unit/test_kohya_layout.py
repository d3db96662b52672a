"""kohya folder layout: repeats, class tokens, captions, warnings and every DataError."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.kohya_layout import (
    balanced_reg_items,
    caption_extensions,
    parse_folder_name,
    repeated_items,
    scan_dataset,
)
from trainer.errors import DataError


def make_image(path: Path, size=(40, 24), seed=0, **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_args)
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("5_chelsea cat", (5, "chelsea cat")),
        ("10_a_b", (10, "a_b")),
        ("007_sks dog", (7, "sks dog")),
        ("3_", (3, "")),
        ("cat", None),
        ("x_cat", None),
        ("-1_cat", None),
    ],
)
def test_parse_folder_name(name, expected):
    assert parse_folder_name(name) == expected


def test_caption_extensions_try_configured_then_caption():
    assert caption_extensions(".txt") == [".txt", ".caption"]
    assert caption_extensions("txt") == [".txt", ".caption"]
    assert caption_extensions(".caption") == [".caption"]


def test_scan_reads_repeats_tokens_sizes_and_captions(tmp_path, caplog):
    root = tmp_path / "img"
    cat = root / "5_chelsea cat"
    make_image(cat / "a.png", (40, 24))
    (cat / "a.txt").write_text("chelsea cat, tabby\n", encoding="utf-8")
    make_image(cat / "b.JPEG", (24, 40))
    (cat / "b.caption").write_text("\n  chelsea cat, sleeping  \nsecond line\n", encoding="utf-8")
    (cat / "notes.md").write_text("not an image")
    make_image(root / "2_dog" / "c.WebP", (32, 32))
    make_image(root / "unsorted" / "d.png")
    make_image(root / "loose.png")
    with caplog.at_level(logging.WARNING, logger="trainer.data.kohya_layout"):
        subsets = scan_dataset(root, ".txt")

    assert [(s.name, s.n_repeats, s.class_token) for s in subsets] == [
        ("2_dog", 2, "dog"),
        ("5_chelsea cat", 5, "chelsea cat"),
    ]
    dog, cat_subset = subsets
    assert [(i.path.name, i.size, i.caption) for i in cat_subset.images] == [
        ("a.png", (40, 24), "chelsea cat, tabby"),
        ("b.JPEG", (24, 40), "chelsea cat, sleeping"),
    ]
    # No caption file: the class token is the caption, and the image is named in a warning.
    assert dog.images[0].caption == "dog"
    assert all(not i.is_reg and i.folder == "5_chelsea cat" for i in cat_subset.images)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unsorted" in w and "ignored folder" in w for w in warnings)
    assert any("loose.png" in w and "ignored image" in w for w in warnings)
    assert any(str(dog.images[0].path) in w and "no caption" in w for w in warnings)


def test_custom_caption_extension_and_reg_flag(tmp_path):
    make_image(tmp_path / "1_cat" / "x.png")
    (tmp_path / "1_cat" / "x.tags").write_text("a cat", encoding="utf-8")
    (tmp_path / "1_cat" / "x.txt").write_text("not this one", encoding="utf-8")
    (item,) = scan_dataset(tmp_path, "tags", is_reg=True)[0].images
    assert item.caption == "a cat" and item.is_reg


def test_exif_rotation_swaps_the_displayed_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise when displayed
    make_image(tmp_path / "1_cat" / "phone.jpg", (48, 16), exif=exif)
    assert scan_dataset(tmp_path)[0].images[0].size == (16, 48)


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        scan_dataset(missing)
    assert str(missing) in str(info.value) and "<N>_<class token>" in str(info.value)


def test_folder_without_repeat_folders_is_an_error(tmp_path):
    make_image(tmp_path / "cats" / "a.png")
    with pytest.raises(DataError, match="no '<N>_<class token>' subfolder") as info:
        scan_dataset(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_empty_data_folder_is_an_error(tmp_path):
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_repeat_folders_without_images_are_an_error(tmp_path):
    (tmp_path / "3_cat").mkdir()
    (tmp_path / "3_cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image") as info:
        scan_dataset(tmp_path)
    assert "3_cat" in str(info.value) and ".png" in str(info.value)


def test_zero_repeats_is_an_error(tmp_path):
    make_image(tmp_path / "0_cat" / "a.png")
    with pytest.raises(DataError, match="must be an integer >= 1") as info:
        scan_dataset(tmp_path)
    assert str(tmp_path / "0_cat") in str(info.value)


def test_every_corrupt_image_is_named(tmp_path):
    folder = tmp_path / "2_cat"
    good = make_image(folder / "good.png", (64, 64))
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    truncated = folder / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path)
    message = str(info.value)
    assert str(folder / "garbage.jpg") in message and str(truncated) in message
    assert "good.png" not in message and "not a readable image" in message


def test_empty_caption_file_is_an_error(tmp_path):
    make_image(tmp_path / "1_cat" / "a.png")
    (tmp_path / "1_cat" / "a.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="caption file is empty") as info:
        scan_dataset(tmp_path)
    assert str(tmp_path / "1_cat" / "a.txt") in str(info.value)


def test_repeats_and_reg_balancing(tmp_path, caplog):
    for i in range(2):
        make_image(tmp_path / "train" / "3_cat" / f"t{i}.png", seed=i)
    for i in range(4):
        make_image(tmp_path / "reg" / "1_animal" / f"r{i}.png", seed=10 + i)
    train = scan_dataset(tmp_path / "train")
    reg = scan_dataset(tmp_path / "reg", is_reg=True)

    train_items = repeated_items(train)
    assert [i.path.name for i in train_items] == ["t0.png"] * 3 + ["t1.png"] * 3
    # Fewer reg images than train samples: cycled up to the same count.
    cycled = balanced_reg_items(reg, len(train_items))
    assert [i.path.name for i in cycled] == [
        "r0.png",
        "r1.png",
        "r2.png",
        "r3.png",
        "r0.png",
        "r1.png",
    ]
    # More reg images than train samples: the first ones only, with a warning.
    with caplog.at_level(logging.WARNING, logger="trainer.data.kohya_layout"):
        first = balanced_reg_items(reg, 3)
    assert [i.path.name for i in first] == ["r0.png", "r1.png", "r2.png"]
    assert "only the first 3" in caplog.text
    assert balanced_reg_items([], 6) == []


def test_absurd_repeat_counts_are_refused_before_anything_is_built(tmp_path, monkeypatch):
    make_image(tmp_path / "100000000_cat" / "a.png")
    make_image(tmp_path / "3_dog" / "b.png")
    with pytest.raises(DataError) as info:
        scan_dataset(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "100000000_cat") in message
    assert "is 100000000" in message and "<= 10,000" in message
    assert "3_dog" not in message


def test_the_samples_of_one_epoch_are_bounded(tmp_path, monkeypatch):
    import trainer.data.kohya_layout as layout

    monkeypatch.setattr(layout, "MAX_SAMPLES_PER_EPOCH", 10)
    for i in range(3):
        make_image(tmp_path / "4_cat" / f"{i}.png", seed=i)
    with pytest.raises(DataError, match=r"12 samples per epoch.*'4_cat': 4 x 3.*at most 10"):
        scan_dataset(tmp_path)
    monkeypatch.setattr(layout, "MAX_SAMPLES_PER_EPOCH", 12)
    assert len(repeated_items(scan_dataset(tmp_path))) == 12

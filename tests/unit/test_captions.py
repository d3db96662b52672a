"""Caption shuffle, keep_tokens, caption/tag dropout, determinism and tag frequency."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.data.captions import (
    CaptionOptions,
    caption_for_step,
    join_tags,
    split_tags,
    tag_frequency,
)
from trainer.data.kohya_layout import ImageItem
from trainer.errors import ConfigError

CAPTION = "chelsea cat, cat, tabby, green eyes, whiskers, indoors, close-up, fur"
TAGS = split_tags(CAPTION)


def outputs(options: CaptionOptions, n: int = 400, caption: str = CAPTION) -> list[str]:
    return [caption_for_step(caption, options, seed=3, epoch=e % 4, index=e) for e in range(n)]


def test_split_and_join():
    assert split_tags(" a ,b,, c ,") == ["a", "b", "c"]
    assert join_tags(["a", "b"]) == "a, b"
    assert join_tags(["a", "b"], "|") == "a| b"
    assert join_tags(["a", "b"], " ") == "a b"


def test_without_options_the_caption_is_verbatim():
    odd = "chelsea cat ,tabby,,  indoors"
    assert set(outputs(CaptionOptions(), 20, odd)) == {odd}


def test_shuffle_keeps_the_leading_tokens_and_every_tag():
    options = CaptionOptions(shuffle=True, keep_tokens=2)
    results = outputs(options)
    for result in results:
        tags = split_tags(result)
        assert tags[:2] == ["chelsea cat", "cat"]
        assert sorted(tags) == sorted(TAGS)
    # The other six tags really move: many distinct orders appear.
    assert len(set(results)) > 100


def test_shuffle_without_keep_tokens_moves_the_first_tag():
    firsts = {split_tags(r)[0] for r in outputs(CaptionOptions(shuffle=True))}
    assert len(firsts) == len(TAGS)


def test_caption_dropout_rates():
    assert set(outputs(CaptionOptions(dropout_rate=1.0))) == {""}
    assert "" not in outputs(CaptionOptions(dropout_rate=0.0, shuffle=True))
    dropped = outputs(CaptionOptions(dropout_rate=0.3), n=2000).count("") / 2000
    assert 0.25 < dropped < 0.35


def test_tag_dropout_never_drops_kept_tags():
    only_kept = outputs(CaptionOptions(keep_tokens=1, tag_dropout_rate=1.0))
    assert set(only_kept) == {"chelsea cat"}
    results = outputs(CaptionOptions(keep_tokens=1, tag_dropout_rate=0.5), n=1000)
    assert all(r.startswith("chelsea cat") for r in results)
    kept_fraction = sum(len(split_tags(r)) - 1 for r in results) / (1000 * (len(TAGS) - 1))
    assert 0.45 < kept_fraction < 0.55
    # Without shuffle, the surviving tags keep their order.
    for result in results:
        tags = split_tags(result)
        assert tags == [t for t in TAGS if t in tags]


def test_same_seed_epoch_index_give_the_same_caption():
    options = CaptionOptions(shuffle=True, keep_tokens=1, tag_dropout_rate=0.2, dropout_rate=0.1)
    first = [
        caption_for_step(CAPTION, options, 7, epoch, i) for epoch in range(3) for i in range(20)
    ]
    again = [
        caption_for_step(CAPTION, options, 7, epoch, i) for epoch in range(3) for i in range(20)
    ]
    other_seed = [
        caption_for_step(CAPTION, options, 8, epoch, i) for epoch in range(3) for i in range(20)
    ]
    assert first == again
    assert first != other_seed
    # A sample gets a different caption in different epochs.
    assert len({caption_for_step(CAPTION, options, 7, e, 0) for e in range(10)}) > 1


def test_from_config_reads_and_checks_keys():
    cfg = SimpleNamespace(
        shuffle_caption=True,
        keep_tokens=1,
        caption_separator=";",
        caption_dropout_rate=0.25,
        caption_tag_dropout_rate=0,
    )
    assert CaptionOptions.from_config(cfg) == CaptionOptions(True, 1, ";", 0.25, 0.0)
    bad = SimpleNamespace(
        shuffle_caption="yes", keep_tokens=-1, caption_separator="", caption_dropout_rate=1.5
    )
    with pytest.raises(ConfigError) as info:
        CaptionOptions.from_config(bad)
    problems = "\n".join(info.value.problems)
    for key in ("shuffle_caption", "keep_tokens", "caption_separator", "caption_dropout_rate"):
        assert f"data.{key}" in problems
    assert "data.caption_tag_dropout_rate: the key is missing" in problems
    assert len(info.value.problems) == 5


def test_tag_frequency_counts_images_per_folder():
    def item(folder: str, caption: str) -> ImageItem:
        return ImageItem(Path("x.png"), caption, (8, 8), folder, "tok", 5, False)

    items = [item("5_cat", "cat, tabby"), item("5_cat", "cat, fur"), item("1_dog", "dog")]
    assert tag_frequency(items) == {
        "5_cat": {"cat": 2, "tabby": 1, "fur": 1},
        "1_dog": {"dog": 1},
    }

"""Per-step caption processing: tag shuffle, kept leading tags, caption and tag dropout.

A caption is a list of tags joined by ``caption_separator`` ("chelsea cat, tabby, indoors").
The first ``keep_tokens`` tags (usually the trigger) stay in place and are never dropped; the
others are shuffled and/or dropped. Every random choice comes from a generator seeded by
(seed, epoch, sample index), so a run is reproducible and independent of worker scheduling.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trainer.data.common import is_int, is_number, raise_if, read_keys, require, rng_for
from trainer.data.kohya_layout import ImageItem

CONFIG_KEYS = (
    "shuffle_caption",
    "keep_tokens",
    "caption_separator",
    "caption_dropout_rate",
    "caption_tag_dropout_rate",
)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


@dataclass(frozen=True)
class CaptionOptions:
    shuffle: bool = False
    keep_tokens: int = 0
    separator: str = ","
    dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> CaptionOptions:
        """Read ``shuffle_caption``, ``keep_tokens``, ``caption_separator`` and the rates."""
        values, problems = read_keys(cfg, tuple(CONFIG_KEYS), "data")
        require(values, "shuffle_caption", _is_bool, "must be true or false", problems)
        require(
            values,
            "keep_tokens",
            lambda v: is_int(v) and v >= 0,
            "must be an integer >= 0",
            problems,
        )
        require(
            values,
            "caption_separator",
            lambda v: isinstance(v, str) and v != "",
            "must be a non-empty string",
            problems,
        )
        for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            require(
                values,
                key,
                lambda v: is_number(v) and 0 <= v <= 1,
                "must be a number in [0, 1]",
                problems,
            )
        raise_if(problems)
        return cls(
            shuffle=values["shuffle_caption"],
            keep_tokens=values["keep_tokens"],
            separator=values["caption_separator"],
            dropout_rate=float(values["caption_dropout_rate"]),
            tag_dropout_rate=float(values["caption_tag_dropout_rate"]),
        )

    @property
    def changes_captions(self) -> bool:
        """False when every caption is used verbatim (then nothing is split or rejoined)."""
        return self.shuffle or self.dropout_rate > 0 or self.tag_dropout_rate > 0


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """The non-empty, stripped tags of ``caption``."""
    return [tag.strip() for tag in caption.split(separator) if tag.strip()]


def join_tags(tags: Iterable[str], separator: str = ",") -> str:
    """Rejoin tags the way people write them: ``"a, b"`` for the separator ``","``."""
    joiner = separator if separator.strip() == "" or separator.endswith(" ") else separator + " "
    return joiner.join(tags)


def process_caption(caption: str, options: CaptionOptions, rng: random.Random) -> str:
    """The caption used for one step: whole-caption dropout, then tag dropout and shuffle."""
    if not options.changes_captions:
        return caption
    # Draw the caption-dropout coin first and always, so that the remaining draws do not
    # depend on whether the rate is zero.
    if rng.random() < options.dropout_rate:
        return ""
    if not (options.shuffle or options.tag_dropout_rate > 0):
        return caption
    tags = split_tags(caption, options.separator)
    kept, rest = tags[: options.keep_tokens], tags[options.keep_tokens :]
    if options.tag_dropout_rate > 0:
        rest = [tag for tag in rest if rng.random() >= options.tag_dropout_rate]
    if options.shuffle:
        rng.shuffle(rest)
    return join_tags(kept + rest, options.separator)


def caption_for_step(
    caption: str, options: CaptionOptions, seed: int, epoch: int, index: int
) -> str:
    """:func:`process_caption` with the generator of (seed, epoch, sample index)."""
    return process_caption(caption, options, rng_for("caption", seed, epoch, index))


def tag_frequency(items: Iterable[ImageItem], separator: str = ",") -> dict[str, dict[str, int]]:
    """kohya's ``ss_tag_frequency``: per folder, how many images carry each tag.

    Counted once per image (repeats are not counted), as kohya does.
    """
    frequency: dict[str, dict[str, int]] = {}
    for item in items:
        counts = frequency.setdefault(item.folder, {})
        for tag in split_tags(item.caption, separator):
            counts[tag] = counts.get(tag, 0) + 1
    return frequency

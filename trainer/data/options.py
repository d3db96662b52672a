"""The ``data`` group read into :class:`DataOptions` (folders, captions, buckets,
augmentation), without torch: the run's settings hold it, and the data pipeline
(``trainer.data.dataset.build_training_data``) takes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.augment import AugmentOptions
from trainer.data.buckets import BucketOptions
from trainer.data.captions import CaptionOptions
from trainer.data.common import is_int, raise_if, read_keys, require
from trainer.errors import ConfigError

CONFIG_KEYS = ("dir", "reg_dir", "caption_extension", "cache_latents", "num_workers")


@dataclass(frozen=True)
class DataOptions:
    """Every data key, read and checked once."""

    dir: Path
    reg_dir: Path | None
    caption_extension: str
    cache_latents: bool
    num_workers: int
    captions: CaptionOptions
    buckets: BucketOptions
    augment: AugmentOptions

    @classmethod
    def from_config(cls, cfg: Any) -> DataOptions:
        """Read the data sub-config; ConfigError lists every bad key at once."""
        values, problems = read_keys(cfg, tuple(CONFIG_KEYS), "data")
        require(
            values,
            "dir",
            lambda v: isinstance(v, str | Path) and str(v) != "",
            "must be the path of the training images folder",
            problems,
        )
        require(
            values,
            "reg_dir",
            lambda v: v is None or isinstance(v, str | Path),
            "must be null or a folder path",
            problems,
        )
        require(
            values,
            "caption_extension",
            lambda v: isinstance(v, str) and v.strip() != "",
            "must be a file extension such as .txt",
            problems,
        )
        require(
            values,
            "cache_latents",
            lambda v: isinstance(v, bool),
            "must be true or false",
            problems,
        )
        require(
            values,
            "num_workers",
            lambda v: is_int(v) and v >= 0,
            "must be an integer >= 0",
            problems,
        )
        parts = {}
        for name, reader in (
            ("captions", CaptionOptions),
            ("buckets", BucketOptions),
            ("augment", AugmentOptions),
        ):
            try:
                parts[name] = reader.from_config(cfg)
            except ConfigError as err:
                problems += err.problems
        raise_if(problems)
        reg_dir = values["reg_dir"]
        return cls(
            dir=Path(values["dir"]),
            reg_dir=Path(reg_dir) if reg_dir not in (None, "") else None,
            caption_extension=values["caption_extension"],
            cache_latents=values["cache_latents"],
            num_workers=values["num_workers"],
            **parts,
        )

    @property
    def caches_latents(self) -> bool:
        """Latents are cached unless switched off or augmentations change pixels every step."""
        return self.cache_latents and not self.augment.pixels_vary

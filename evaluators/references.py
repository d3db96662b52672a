"""The real images evaluation compares against, and the trigger word of the subject.

Reference images (CLIP-I, DINO, face) default to the training images; held-out images for the
validation loss default to them too. A folder may be in kohya's layout (``N_name`` subfolders,
captions beside the images) or simply hold images, with optional same-stem ``.txt`` captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trainer.data.images import load_rgb
from trainer.data.kohya_layout import (
    IMAGE_EXTENSIONS,
    caption_extensions,
    parse_folder_name,
    read_caption,
    scan_dataset,
)
from trainer.errors import DataError


@dataclass(frozen=True)
class ReferenceImage:
    path: Path
    caption: str
    image: Image.Image


def _is_kohya_root(folder: Path) -> bool:
    return any(p.is_dir() and parse_folder_name(p.name) for p in folder.iterdir())


def _plain_folder(folder: Path, caption_extension: str | None, default_caption: str) -> list:
    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        caption = default_caption
        for ext in caption_extensions(caption_extension):
            if path.with_suffix(ext).is_file():
                caption = read_caption(path.with_suffix(ext))
                break
        items.append((path, caption))
    return items


def _spread(items: list, limit: int) -> list:
    """At most ``limit`` items spread evenly over the sorted list (deterministic)."""
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def load_images(
    folder: str | Path,
    limit: int,
    caption_extension: str | None = ".txt",
    default_caption: str = "",
    key: str = "eval.reference_dir",
) -> list[ReferenceImage]:
    """Up to ``limit`` images of ``folder`` (kohya layout or plain), with captions."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{key}: {str(folder)!r} is not a folder of images")
    if _is_kohya_root(folder):
        subsets = scan_dataset(folder, caption_extension)
        items = [(i.path, i.caption) for s in subsets for i in s.images]
    else:
        items = _plain_folder(folder, caption_extension, default_caption)
    if not items:
        raise DataError(
            f"{key}: {str(folder)!r} holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [ReferenceImage(p, c, load_rgb(p)) for p, c in _spread(items, limit)]


def trigger_problem(data_dir: str | Path | None) -> str | None:
    """Why no default trigger can be read from ``data_dir`` (``eval.trigger`` unset), or None:
    a check before training from the folder names alone (no image is opened)."""
    root = Path(str(data_dir)).expanduser() if data_dir else None
    if root is None or not root.is_dir():
        return None  # data.dir's own check says what is wrong with it
    names = [e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith(".")]
    tokens = [t for t in (parse_folder_name(n) for n in names) if t and t[1]]
    if tokens:
        return None
    return (
        f"eval.trigger: null, and no folder of data.dir {str(root)!r} gives a class token "
        f"(folders: {sorted(names)}; kohya '<N>_<class token>', e.g. '5_chelsea cat'): the "
        "evaluation's prompts need one; set eval.trigger or name the class token"
    )


def default_trigger(data_dir: str | Path, caption_extension: str | None = ".txt") -> str:
    """The class token of the first training folder (``5_chelsea cat`` -> ``chelsea cat``).

    In kohya's layout that token is the caption of every uncaptioned image, and users name the
    folder after their trigger word; set ``eval.trigger`` when it is not.
    """
    subsets = scan_dataset(data_dir, caption_extension)
    tokens = [s.class_token for s in subsets if s.images and s.class_token]
    if not tokens:
        raise DataError(
            f"data.dir {str(data_dir)!r}: no folder gives a class token; set eval.trigger"
        )
    return tokens[0]

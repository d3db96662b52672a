"""Read a training folder in kohya's layout: ``<dir>/<N>_<class token>/`` image folders.

``N`` is how many times each image of the folder is seen per epoch (repeats), the rest of the
name is the class token ("5_chelsea cat" -> 5 repeats, token "chelsea cat"). Each image may
have a caption file with the same stem; without one the class token is its caption. Every
image is opened and verified here, at scan time, so that a corrupt file stops the run before
any model is loaded instead of crashing it hours later.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trainer.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
FALLBACK_CAPTION_EXTENSION = ".caption"
_FOLDER_NAME = re.compile(r"^(\d+)_(.*)$", re.DOTALL)
# Bounds on what a folder name makes the trainer hold: an epoch is a list of N x images
# samples, built before any model loads. Guides use N = 1..100 (kohya's examples: 10-40);
# 10,000 repeats is far beyond any recipe, and a million samples per epoch (a few MB of
# references, about a day of training on a fast GPU) is far beyond any LoRA data set. A typo
# such as '100000000_cat' would otherwise build a list of 10^8 samples per image and get the
# process killed for memory instead of an error.
MAX_REPEATS = 10_000
MAX_SAMPLES_PER_EPOCH = 1_000_000
# EXIF orientations 5-8 are rotated by 90 degrees: width and height swap when displayed.
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class ImageItem:
    """One image of a subset, with everything the later stages need to know about it."""

    path: Path
    caption: str
    size: tuple[int, int]
    """(width, height) as displayed, i.e. after the EXIF orientation is applied."""
    folder: str
    class_token: str
    n_repeats: int
    is_reg: bool


@dataclass(frozen=True)
class Subset:
    """One ``N_name`` folder."""

    path: Path
    n_repeats: int
    class_token: str
    is_reg: bool
    images: tuple[ImageItem, ...]

    @property
    def name(self) -> str:
        return self.path.name


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """``"5_chelsea cat"`` -> ``(5, "chelsea cat")``; None when there is no ``N_`` prefix."""
    match = _FOLDER_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2).strip()


def caption_extensions(caption_extension: str | None) -> list[str]:
    """The caption file extensions tried in order: the configured one, then ``.caption``."""
    ext = (caption_extension or ".txt").strip()
    if not ext.startswith("."):
        ext = "." + ext
    return list(dict.fromkeys([ext, FALLBACK_CAPTION_EXTENSION]))


def scan_dataset(
    root: str | Path, caption_extension: str | None = ".txt", *, is_reg: bool = False
) -> list[Subset]:
    """Every ``N_name`` subset of ``root`` with its images and captions, sorted by name.

    Raises :class:`DataError` listing every problem found (missing folder, ``N`` = 0,
    unreadable images, unreadable caption files, no image at all).
    """
    root = Path(root).expanduser()
    kind = "regularisation" if is_reg else "training"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"{kind} data folder {str(root)!r} {what}; expected a folder holding "
            "'<N>_<class token>' subfolders of images (kohya layout, e.g. '5_chelsea cat')"
        )
    problems: list[str] = []
    subsets = []
    for entry in sorted(root.iterdir()):
        subset = _scan_entry(entry, caption_extension, is_reg, problems)
        if subset is not None:
            subsets.append(subset)
    samples = sum(s.n_repeats * len(s.images) for s in subsets)
    if samples > MAX_SAMPLES_PER_EPOCH:
        counts = ", ".join(f"{s.name!r}: {s.n_repeats} x {len(s.images)}" for s in subsets)
        problems.append(
            f"{str(root)!r}: the folders make {samples:,} samples per epoch (repeats x images: "
            f"{counts}); at most {MAX_SAMPLES_PER_EPOCH:,} are allowed: lower the repeat counts"
        )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{kind} data folder {str(root)!r} has unusable entries:\n{lines}")
    if not subsets:
        raise DataError(
            f"{kind} data folder {str(root)!r} has no '<N>_<class token>' subfolder "
            "(kohya layout: e.g. '5_chelsea cat' = 5 repeats of the images inside)"
        )
    if not any(s.images for s in subsets):
        names = ", ".join(repr(s.name) for s in subsets)
        raise DataError(
            f"{kind} data folder {str(root)!r} has no image in its subfolders ({names}); "
            f"expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return subsets


def _scan_entry(
    entry: Path, caption_extension: str | None, is_reg: bool, problems: list[str]
) -> Subset | None:
    if entry.name.startswith("."):
        return None
    if not entry.is_dir():
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            log.warning("ignored image %s: images must be inside an '<N>_<name>' folder", entry)
        return None
    parsed = parse_folder_name(entry.name)
    if parsed is None:
        log.warning(
            "ignored folder %s: its name does not start with '<N>_' (N = repeats, e.g. '5_%s')",
            entry,
            entry.name,
        )
        return None
    n_repeats, class_token = parsed
    if not 1 <= n_repeats <= MAX_REPEATS:
        problems.append(
            f"{str(entry)!r}: the repeat count N in '<N>_<class token>' is {n_repeats}; "
            f"it must be an integer >= 1 and <= {MAX_REPEATS:,} (each image is seen N times "
            "per epoch; guides use 1-100)"
        )
        return None
    known_problems = len(problems)
    images = _scan_images(entry, n_repeats, class_token, caption_extension, is_reg, problems)
    uncaptioned = [item.path.name for item in images if not item.caption]
    if not class_token and uncaptioned:
        problems.append(
            f"{str(entry)!r}: the folder name gives no class token ('<N>_<class token>', e.g. "
            f"'5_chelsea cat'), and {len(uncaptioned)} image(s) have no caption file (e.g. "
            f"{uncaptioned[0]!r}): they would train on an empty caption; name the class token "
            "or give every image a caption"
        )
    if not images and len(problems) == known_problems:
        log.warning("folder %s has no image (%s)", entry, ", ".join(sorted(IMAGE_EXTENSIONS)))
    return Subset(entry, n_repeats, class_token, is_reg, tuple(images))


def _scan_images(
    folder: Path,
    n_repeats: int,
    class_token: str,
    caption_extension: str | None,
    is_reg: bool,
    problems: list[str],
) -> list[ImageItem]:
    extensions = caption_extensions(caption_extension)
    items = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if not path.is_file():
            continue
        try:
            size = read_image_size(path)
            caption = _caption_for(path, class_token, extensions)
        except DataError as err:
            problems.append(str(err))
            continue
        items.append(ImageItem(path, caption, size, folder.name, class_token, n_repeats, is_reg))
    return items


def read_image_size(path: Path) -> tuple[int, int]:
    """Open and verify ``path``; its displayed (width, height). DataError if unreadable."""
    try:
        with Image.open(path) as img:
            img.verify()
        # verify() leaves the file unusable: reopen to read the size and orientation.
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
        raise DataError(
            f"{str(path)!r}: not a readable image ({type(err).__name__}: {err}); expected a "
            f"valid {', '.join(sorted(IMAGE_EXTENSIONS))} file"
        ) from err
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    return width, height


def _caption_for(image: Path, class_token: str, extensions: list[str]) -> str:
    for ext in extensions:
        candidate = image.with_suffix(ext)
        if candidate.is_file():
            return read_caption(candidate)
    log.warning(
        "no caption for image %s (looked for %s): using the class token %r",
        image,
        " or ".join(image.stem + e for e in extensions),
        class_token,
    )
    return class_token


def read_caption(path: Path) -> str:
    """The first non-empty line of a UTF-8 caption file (kohya reads one line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{str(path)!r}: caption file is not readable UTF-8 text ({err})") from err
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise DataError(
        f"{str(path)!r}: caption file is empty; write a caption in it, or delete it to use "
        "the folder's class token"
    )


def repeated_items(subsets: list[Subset]) -> list[ImageItem]:
    """Each image as many times as its folder's repeat count: one epoch's training samples."""
    return [item for subset in subsets for item in subset.images for _ in range(subset.n_repeats)]


def balanced_reg_items(reg_subsets: list[Subset], count: int) -> list[ImageItem]:
    """Regularisation samples for one epoch: as many as there are training samples.

    As in kohya, the reg images (each with its folder's repeats) are cycled until ``count``
    samples are reached; when there are more than ``count``, only the first ones are used.
    """
    pool = repeated_items(reg_subsets)
    if not pool or count <= 0:
        return []
    if len(pool) > count:
        log.warning(
            "%d regularisation samples for %d training samples per epoch: only the first %d "
            "are used",
            len(pool),
            count,
            count,
        )
    return [pool[i % len(pool)] for i in range(count)]

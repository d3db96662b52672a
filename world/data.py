"""World data on disk (kohya layout) and in memory (batches for the training scripts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from world.scene import (
    BACKGROUNDS,
    CLASS_WORD,
    COLOURS,
    POSITIONS,
    TRIGGER,
    Scene,
    caption,
    random_base_scene,
    render,
    subject_training_scenes,
)

SUBJECT_REPEATS = 10
CLASS_REPEATS = 1


def write_folder(folder: Path, scenes: list[Scene], seed: int, stem: str) -> list[Path]:
    """Render ``scenes`` into ``folder`` as ``<stem>_NNN.png`` with a ``.txt`` caption each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, scene in enumerate(scenes):
        path = folder / f"{stem}_{k:03d}.png"
        render(scene, rng).save(path, optimize=True)
        path.with_suffix(".txt").write_text(caption(scene) + "\n")
        paths.append(path)
    return paths


def write_subject(root: Path, n: int = 10, seed: int = 1) -> Path:
    """``root/img/10_sks star/``: ``n`` subject images on its two training backgrounds."""
    folder = root / "img" / f"{SUBJECT_REPEATS}_{TRIGGER} {CLASS_WORD}"
    write_folder(folder, subject_training_scenes(n), seed, "sks")
    return folder


def class_scenes(n: int) -> list[Scene]:
    """``n`` base-world stars cycling over every colour, background and position."""
    colours, bgs, positions = list(COLOURS), list(BACKGROUNDS), list(POSITIONS)
    return [
        Scene(CLASS_WORD, colours[k % 4], bgs[(k // 4) % 4], positions[(k // 16 + k) % 3])
        for k in range(n)
    ]


def write_class(root: Path, n: int = 32, seed: int = 2) -> Path:
    """``root/reg/1_star/``: class images for prior preservation (real world images)."""
    folder = root / "reg" / f"{CLASS_REPEATS}_{CLASS_WORD}"
    write_folder(folder, class_scenes(n), seed, "star")
    return folder


def base_batches(
    seed: int, batch_size: int, partial_captions: bool = True
) -> Iterator[tuple[np.ndarray, list[str], list[Scene]]]:
    """Endless base-world batches: uint8 images (B, 64, 64, 3), captions, scenes."""
    rng = np.random.default_rng(seed)
    while True:
        scenes = [random_base_scene(rng) for _ in range(batch_size)]
        images = np.stack([np.asarray(render(s, rng)) for s in scenes])
        captions = [caption(s, rng, full=not partial_captions) for s in scenes]
        yield images, captions, scenes

"""What the world's training scripts share: seeding, rendered image sets, tensors, and folders
written so that a reader sees the old one or the new one, never a half-written mixture."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.atomic_write import atomic_path, temp_path, write_text
from trainer.data.latent_cache import file_digest
from trainer.models.tiny import SCHEDULER_CONFIG as TINY_SCHEDULER_CONFIG
from world.scene import Scene, caption, random_base_scene, render

WEIGHTS = Path(__file__).parent / "weights"
WORK = Path(".cache/world")
# SD 1.x's training noise schedule (the same numbers the project's tiny model uses).
SCHEDULER_CONFIG = dict(TINY_SCHEDULER_CONFIG)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Fix every random source the scripts use; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)


@dataclass
class ImageSet:
    """Rendered base-world scenes: uint8 images (N, 64, 64, 3) with full and partial captions."""

    images: np.ndarray
    captions: list[str]
    partial: list[str]
    scenes: list[Scene]


def render_set(n: int, seed: int) -> ImageSet:
    """``n`` random base-world scenes; the same ``seed`` always gives the same set."""
    rng = np.random.default_rng(seed)
    scenes = [random_base_scene(rng) for _ in range(n)]
    images = np.stack([np.asarray(render(s, rng)) for s in scenes]) if n else np.zeros((0,))
    captions = [caption(s) for s in scenes]
    partial = [caption(s, rng, full=False) for s in scenes]
    return ImageSet(images, captions, partial, scenes)


def cached_render_set(n: int, seed: int, work: Path = WORK) -> ImageSet:
    """:func:`render_set`, kept in ``work`` as ``.npz`` (rendering is the slow part; the content
    is a pure function of ``n`` and ``seed``, so a kept file is the same set)."""
    path = Path(work) / f"render-{n}-{seed}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            scenes = [Scene(*row[:4]) for row in f["scenes"].tolist()]
            return ImageSet(f["images"], f["captions"].tolist(), f["partial"].tolist(), scenes)
    data = render_set(n, seed)
    rows = np.array([[s.shape, s.colour, s.background, s.position] for s in data.scenes])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            images=data.images,
            captions=np.array(data.captions),
            partial=np.array(data.partial),
            scenes=rows,
        )
    return data


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range SD's VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def half_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights with floating-point tensors stored as float16 (half the bytes).

    The configs saved beside them keep ``float32``, so ``from_pretrained`` computes in float32.
    """
    return {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in module.state_dict().items()
    }


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden scratch folder beside ``path``; when the block ends without an exception it
    replaces ``path`` (the old folder is moved aside and removed), otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = temp_path(path)
    scratch.mkdir()
    try:
        yield scratch
        mode = 0o666 & ~_umask()
        for weights in scratch.rglob("*.safetensors"):  # safetensors writes them 0600
            weights.chmod(mode)
        old = temp_path(path) if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(scratch, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def folder_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its path relative to ``root``."""
    return {
        str(p.relative_to(root)): file_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.json"
    }


def write_manifest(root: Path = WEIGHTS) -> Path:
    """``MANIFEST.json``: the content address (sha256) of every shipped weights file."""
    files = folder_hashes(root)
    overall = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in files.items()).encode())
    manifest = {"sha256": overall.hexdigest(), "files": files}
    return write_text(root / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")


def command_line(stage: str, args, skip: tuple[str, ...] = ()) -> str:
    """``python -m world <stage> --key value ...`` for every argument (paths relative to the
    working directory where they are inside it): the command that reproduces a run."""
    words = ["python", "-m", "world", stage]
    for key, value in vars(args).items():
        if key in ("command", *skip) or value is None:
            continue
        if isinstance(value, bool):
            words += [] if value else [f"--no-{key.replace('_', '-')}"]
            continue
        values = value if isinstance(value, list) else [value]
        shown = []
        for v in values:
            if isinstance(v, Path) and v.is_absolute():
                with contextlib.suppress(ValueError):
                    v = v.relative_to(Path.cwd())
            shown.append(str(v))
        words += [f"--{key.replace('_', '-')}", *shown]
    return " ".join(words)


def write_json(path: Path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


class Clock:
    """Wall time since creation, and a ``due`` check for periodic checkpoints."""

    def __init__(self, every_s: float) -> None:
        self.start = self.last = time.monotonic()
        self.every_s = every_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def due(self) -> bool:
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            return True
        return False


def stage_record(folder: Path) -> dict:
    """What an earlier stage recorded about itself (its command, time and numbers)."""
    path = Path(folder) / "world_training.json"
    return json.loads(path.read_text()) if path.is_file() else {}

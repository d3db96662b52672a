"""What a result depends on besides its config: code version, package versions, data.

Recorded on every tracked run and printed in the report, so that a number can be traced to the
exact code (git commit, and whether the tree had uncommitted changes), the libraries, and the
training images and captions it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from trainer.data.kohya_layout import scan_dataset

# The libraries whose version can change a trained adapter or its scores.
PACKAGES = (
    "lorasweep",
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "safetensors",
    "accelerate",
    "optuna",
    "hydra-core",
    "mlflow",
    "prodigyopt",
    "dadaptation",
    "bitsandbytes",
    "lycoris-lora",
)


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """``{package: version}`` for the installed ones, plus ``python``."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git(project_dir: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(project_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(project_dir: str | Path) -> dict[str, str]:
    """``{"commit": sha, "dirty": "true"|"false"}``; empty outside a git checkout.

    Dirty means tracked files differ from the commit: the commit alone does not reproduce.
    """
    project_dir = Path(project_dir)
    commit = _git(project_dir, "rev-parse", "HEAD")
    if not commit:
        return {}
    status = _git(project_dir, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": "true" if status else "false"}


def data_hash(data_dir: str | Path, reg_dir: str | Path | None, caption_extension: str) -> str:
    """sha256 over what training reads: every subset folder (name = repeats and class token)
    and each image's bytes and caption, for the training and the regularisation folders.
    A file's timestamps do not matter; its name, a pixel or a caption word do."""
    digest = hashlib.sha256()
    for kind, root in (("train", data_dir), ("reg", reg_dir)):
        if not root:
            continue
        for subset in scan_dataset(root, caption_extension, is_reg=kind == "reg"):
            digest.update(f"{kind}\0{subset.name}\0".encode())
            for item in subset.images:
                with open(item.path, "rb") as handle:
                    image = hashlib.file_digest(handle, "sha256").hexdigest()
                record = [item.path.name, image, item.caption]
                digest.update(json.dumps(record).encode())
    return digest.hexdigest()


def data_hash_of(data_cfg: Any) -> str | None:
    """:func:`data_hash` of a ``data`` config group; None when the folders cannot be read
    (the run's own validation reports that, with the details)."""
    try:
        return data_hash(
            data_cfg.dir, data_cfg.get("reg_dir"), data_cfg.get("caption_extension", ".txt")
        )
    except Exception:  # noqa: BLE001 - provenance must never be what stops a run
        return None

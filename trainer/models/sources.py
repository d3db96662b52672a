"""What a model path is (a single file, a folder, a hub id), decided without any model library:
the checks before loading (``trainer.validate``, the evaluation's scoring models) use it, and so
do the loaders."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.errors import ModelLoadError
from trainer.settings.model import ACCEPTED_PATHS, MODEL_SUFFIXES

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_LIKE_SUFFIXES = (*MODEL_SUFFIXES, ".bin", ".gguf", ".json", ".yaml", ".yml")


def classify_source(value: str, key: str = "model.path") -> tuple[str, str | Path]:
    """``("single_file" | "folder", Path)`` or ``("hub", id)``; a clear error otherwise."""
    path = Path(value).expanduser()
    if path.is_file():
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise ModelLoadError(
                f"{key}: {path}: unsupported file type {path.suffix!r}; accepted: {ACCEPTED_PATHS}"
            )
        return "single_file", path
    if path.is_dir():
        return "folder", path
    file_like = (
        value.startswith(("/", ".", "~"))
        or "\\" in value
        or path.suffix.lower() in _FILE_LIKE_SUFFIXES
    )
    if _HUB_ID.match(value) and not file_like:
        return "hub", value
    if file_like or "/" in value:
        raise ModelLoadError(f"{key}: file not found: {path} (accepted: {ACCEPTED_PATHS})")
    raise ModelLoadError(f"{key}: {value!r} is not accepted; accepted: {ACCEPTED_PATHS}")

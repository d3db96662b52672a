"""Where a scoring model (CLIP, DINO) comes from, checked before training without loading it
or importing a model library: ``tiny``, a local transformers model directory, or a hub id (only
the local Hugging Face cache when ``HF_HUB_OFFLINE`` is set)."""

from __future__ import annotations

import os
from pathlib import Path

from trainer.errors import ModelLoadError
from trainer.models.sources import classify_source

TINY = "tiny"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_source(key: str, value: str) -> tuple[str, str]:
    """("folder", path) or ("hub", id); a clear error for a missing path or a file."""
    kind, location = classify_source(value, key=key)
    if kind == "single_file":
        raise ModelLoadError(
            f"{key}: {location} is a file; expected a transformers model directory (holding "
            f"config.json), a hub id 'owner/name', or 'tiny'"
        )
    if kind == "folder" and not (Path(location) / "config.json").is_file():
        raise ModelLoadError(
            f"{key}: {location} has no config.json, so it is not a transformers model directory"
        )
    return kind, str(location)


def scoring_model_problem(key: str, value: str) -> str | None:
    """Why the scoring model ``value`` of ``eval.<key>`` cannot load, or None; checked before
    training (nothing is loaded): a local directory must hold config.json, and a hub id must be
    in the local Hugging Face cache when HF_HUB_OFFLINE is set."""
    if value == TINY:
        return None
    allowed = "allowed: 'tiny', a hub id 'owner/name', or a local transformers model directory"
    try:
        classify_source(value, key=key)
    except ModelLoadError:
        return f"{key}: {value!r} does not exist (the scoring model); {allowed}"
    try:
        kind, location = resolve_source(key, value)
    except ModelLoadError as error:
        return f"{error} (the scoring model); {allowed}"
    if kind == "hub" and offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(location, "config.json"), str):
            return (
                f"{key}: {value!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                "set; download it first, or give a local model directory (holding config.json) "
                "or 'tiny' (the scoring model)"
            )
    return None

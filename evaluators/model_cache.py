"""Base checkpoints, loaded once per process and shared by every evaluation in it.

Loading an SD 1.x checkpoint takes seconds to minutes; evaluating a sweep touches the same few
checkpoints hundreds of times (every saved epoch of every trial). So each base is loaded with
``trainer.models.loading.load_model`` the first time it is asked for and kept, keyed by the
model keys that change the weights, plus device and dtype. ``LOAD_COUNTS`` records how often each
key was really loaded, so tests (and logs) can check that swaps never reload a base.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.models.components import SDComponents
from trainer.models.loading import load_model

log = logging.getLogger(__name__)

# Keys of the ``model`` group that select weights; the others (resolution, buckets) do not.
WEIGHT_KEYS = ("path", "weights_seed", "prediction_type", "clip_skip", "vae", "single_file_config")

_CACHE: dict[str, SDComponents] = {}
_LOCK = threading.Lock()
LOAD_COUNTS: Counter[str] = Counter()


def _plain(model_cfg: Any) -> dict[str, Any]:
    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)
    if hasattr(model_cfg, "items"):
        return dict(model_cfg.items())
    return {k: getattr(model_cfg, k) for k in WEIGHT_KEYS if hasattr(model_cfg, k)}


def cache_key(model_cfg: Any, device: torch.device, dtype: torch.dtype) -> str:
    """A stable text key for one base model on one device in one dtype."""
    plain = _plain(model_cfg)
    picked = {k: plain.get(k) for k in WEIGHT_KEYS}
    path = picked["path"]
    if path not in (None, "tiny") and Path(str(path)).expanduser().exists():
        picked["path"] = str(Path(str(path)).expanduser().resolve())
    return json.dumps({**picked, "device": str(device), "dtype": str(dtype)}, sort_keys=True)


def get_base_model(
    model_cfg: Any,
    cache_dir: str | Path | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> SDComponents:
    """The base model ``model_cfg`` describes, loaded on first use and then shared.

    The returned modules are in eval mode, frozen, on ``device`` in ``dtype``. Callers may add
    and remove adapters but must leave the base weights as they found them.
    """
    key = cache_key(model_cfg, device, dtype)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        log.info("loading base model %s", key)
        components = load_model(model_cfg, cache_dir)
        for module in (components.unet, components.vae, components.text_encoder):
            module.requires_grad_(False)
            if next(module.parameters()).dtype != dtype:
                module.to(dtype=dtype)
            module.to(device).eval()
        LOAD_COUNTS[key] += 1
        _CACHE[key] = components
        return components


def cached_keys() -> list[str]:
    return list(_CACHE)


def clear_cache() -> None:
    """Forget every loaded base (tests; or to free memory between sweeps)."""
    with _LOCK:
        _CACHE.clear()
        LOAD_COUNTS.clear()

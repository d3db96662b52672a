"""``ModelPool``: the models an evaluation loads, kept for every evaluation that shares the pool.

Loading an SD 1.x checkpoint takes seconds to minutes; evaluating a sweep touches the same few
checkpoints hundreds of times (every saved epoch of every trial), and the scoring models (CLIP,
DINO) and the validation images' latents are the same for each. A pool loads each of them the
first time it is asked for and keeps it:

* base models with ``trainer.models.loading.load_model``, keyed by the model keys that change
  the weights, plus device and dtype; ``load_counts`` records how often each key was really
  loaded, so tests (and logs) can check that swaps never reload a base;
* scoring models (:mod:`evaluators.scoring_models`), keyed by kind, value and device;
* ``latents``: the validation images' latents per VAE (the validation-loss scorer's).

The pool's owner decides its lifetime: the evaluation CLI makes one per invocation (every file
shares it), ``python -m sweeper`` one per process (every job it runs in-process, a sweep's
trials, shares it), and a :class:`~evaluators.harness.Harness` built without one makes its own.
Nothing heavy is imported until a model is asked for, so an entry point may create a pool
before it has checked its config.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import torch

    from evaluators.scoring_models import ClipBundle, DinoBundle
    from trainer.models.components import SDComponents

log = logging.getLogger(__name__)

# Keys of the ``model`` group that select weights; the others (resolution, buckets) do not.
# Flux's components / clip_l / t5xxl / ae replace parts of a single-file transformer's model.
WEIGHT_KEYS = (
    "path", "weights_seed", "prediction_type", "clip_skip", "vae", "single_file_config",
    "components", "clip_l", "t5xxl", "ae",
)  # fmt: skip


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


class ModelPool:
    """Base models, scoring models and validation latents, each loaded once per pool."""

    def __init__(self) -> None:
        self._bases: dict[str, SDComponents] = {}
        self._scoring: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()
        self.load_counts: Counter[str] = Counter()
        # VAE -> {digest of the validation images: their latents}; an entry goes with its VAE.
        self.latents: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict:
        """A pool sent to another process (a joblib worker gets the task function, and the
        process's pool with it) arrives empty: loaded models and the lock stay here, and that
        process loads its own models once."""
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def base_model(
        self,
        model_cfg: Any,
        cache_dir: str | Path | None,
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> SDComponents:
        """The base model ``model_cfg`` describes, loaded on first use and then shared.

        The returned modules are in eval mode, frozen, on ``device`` in ``dtype`` (default
        fp32). Callers may add and remove adapters but must leave the base weights as they
        found them.
        """
        import torch

        from trainer.families import family_of
        from trainer.logs import route_library_logs
        from trainer.models.loading import load_model

        dtype = dtype or torch.float32
        key = cache_key(model_cfg, device, dtype)
        with self._lock:
            cached = self._bases.get(key)
            if cached is not None:
                return cached
            log.info("loading base model %s", key)
            route_library_logs()  # the model libraries are imported by now
            components = load_model(model_cfg, cache_dir)
            text_encoders = family_of(components).text_encoders(components).values()
            for module in (components.unet, components.vae, *text_encoders):
                module.requires_grad_(False)
                if next(module.parameters()).dtype != dtype:
                    module.to(dtype=dtype)
                module.to(device).eval()
            self.load_counts[key] += 1
            self._bases[key] = components
            return components

    def clip(self, value: str, device: torch.device | str = "cpu") -> ClipBundle:
        """The CLIP model for CLIP-I / CLIP-T (:func:`evaluators.scoring_models.load_clip`)."""
        from evaluators.scoring_models import load_clip

        return self._scoring_model("clip", value, device, load_clip)

    def dino(self, value: str, device: torch.device | str = "cpu") -> DinoBundle:
        """The ViT for DINO scores (:func:`evaluators.scoring_models.load_dino`)."""
        from evaluators.scoring_models import load_dino

        return self._scoring_model("dino", value, device, load_dino)

    def _scoring_model(self, kind: str, value: str, device, load) -> Any:
        from trainer.logs import route_library_logs

        key = (kind, str(value), str(device))
        with self._lock:
            if key not in self._scoring:
                route_library_logs()  # the caller imported the model library
                self._scoring[key] = load(str(value), device)
            return self._scoring[key]

    def base_keys(self) -> list[str]:
        """The keys (:func:`cache_key`) of the base models loaded so far."""
        return list(self._bases)

    def base(self, key: str) -> SDComponents:
        return self._bases[key]

    def clear(self) -> None:
        """Forget every loaded model (to free memory; the pool may be used again)."""
        with self._lock:
            self._bases.clear()
            self._scoring.clear()
            self.load_counts.clear()
            self.latents.clear()

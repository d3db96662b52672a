"""CLIP and DINO models for scoring, from a hub id, a local directory, or ``tiny``.

* A local directory (any path-like value: absolute, ``./``, ``~``, or one that exists) must
  exist and hold a transformers model (``config.json``); it is never replaced by a download.
* A hub id ``owner/name`` is read with ``from_pretrained``; when ``HF_HUB_OFFLINE`` is set,
  only the local Hugging Face cache is used and a missing model is a clear error.
* ``tiny`` builds a small CLIP / DINOv2 with deterministic *random* weights, so tests run
  offline. Its numbers measure nothing: every bundle says ``random_weights=True`` and the
  evaluation flags every number computed with it (``eval/random_weights = 1``).

Image preprocessing uses transformers' PIL image processors (torchvision has no CPU build
here). Each call loads anew: an evaluation asks its :class:`~evaluators.model_cache.ModelPool`,
which loads each model once and keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch.nn import functional as F

from evaluators.scoring_sources import TINY
from evaluators.scoring_sources import offline as _offline
from evaluators.scoring_sources import resolve_source as _resolve
from trainer.errors import ModelLoadError
from trainer.models.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

_TINY_IMAGE = 32
_TINY_SEED = 0
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EnvironmentError)


@dataclass
class ClipBundle:
    model: Any  # transformers CLIPModel
    image_processor: Any
    tokenizer: Any
    source: str
    random_weights: bool


@dataclass
class DinoBundle:
    model: Any  # ViTModel (DINO v1, DreamBench) or Dinov2Model
    image_processor: Any
    source: str
    random_weights: bool


def _pil_processor(name: str, **kwargs) -> Any:
    """The PIL-backend image processor class ``name`` (transformers 5), or the classic one."""
    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    return cls(**kwargs)


def _pretrained(key: str, value: str, *classes: Any) -> list[Any]:
    """``from_pretrained`` of each of ``classes``, then the image processor, from a local
    directory (never a download) or a hub id (only the local cache when HF_HUB_OFFLINE is set).
    """
    kind, location = _resolve(key, value)
    local_only = kind == "folder" or _offline()
    try:
        parts = [cls.from_pretrained(location, local_files_only=local_only) for cls in classes]
        return [*parts, _image_processor(location, local_only)]
    except _LOAD_ERRORS as error:
        hint = (
            " (HF_HUB_OFFLINE is set: only the local Hugging Face cache is read; download the "
            "model first or give a local directory)"
            if kind == "hub" and _offline()
            else ""
        )
        raise ModelLoadError(f"{key}: cannot load {value!r}{hint}: {error}") from error


def _image_processor(location: str, local_only: bool) -> Any:
    options: dict[str, Any] = {"local_files_only": local_only}
    if int(transformers.__version__.split(".")[0]) >= 5:
        options["backend"] = "pil"
    return transformers.AutoImageProcessor.from_pretrained(location, **options)


def _tiny_parts(model_class: Any, config: Any, processor: str, **options: Any) -> tuple[Any, Any]:
    """A ``model_class(config)`` with deterministic random weights (the global RNG is left as it
    was) and the PIL image processor ``processor`` at the tiny image size."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = model_class(config)
    size = {"shortest_edge": _TINY_IMAGE}
    crop = {"height": _TINY_IMAGE, "width": _TINY_IMAGE}
    return model, _pil_processor(processor, size=size, crop_size=crop, **options)


def _tiny_clip() -> ClipBundle:
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": _TINY_IMAGE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model, processor = _tiny_parts(transformers.CLIPModel, config, "CLIPImageProcessor")
    return ClipBundle(model, processor, build_clip_tokenizer(), TINY, random_weights=True)


def _tiny_dino() -> DinoBundle:
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=_TINY_IMAGE,
        patch_size=8,
    )
    model, processor = _tiny_parts(
        transformers.Dinov2Model,
        config,
        "BitImageProcessor",
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return DinoBundle(model, processor, TINY, random_weights=True)


def _load_clip(value: str) -> ClipBundle:
    if value == TINY:
        return _tiny_clip()
    model, tokenizer, processor = _pretrained(
        "eval.clip_model", value, transformers.CLIPModel, transformers.CLIPTokenizer
    )
    return ClipBundle(model, processor, tokenizer, value, random_weights=False)


def _load_dino(value: str) -> DinoBundle:
    if value == TINY:
        return _tiny_dino()
    model, processor = _pretrained("eval.dino_model", value, transformers.AutoModel)
    return DinoBundle(model, processor, value, random_weights=False)


def _ready(kind: str, value: str, bundle: Any, device: torch.device) -> Any:
    bundle.model.requires_grad_(False)
    bundle.model.to(device).eval()
    if bundle.random_weights:
        log.warning("eval: %s model %r has RANDOM weights; its scores mean nothing", kind, value)
    return bundle


def load_clip(value: str, device: torch.device | str = "cpu") -> ClipBundle:
    """The CLIP model for CLIP-I / CLIP-T, frozen, in eval mode on ``device``."""
    return _ready("clip", str(value), _load_clip(str(value)), torch.device(device))


def load_dino(value: str, device: torch.device | str = "cpu") -> DinoBundle:
    """The ViT for DINO scores (its CLS token embedding), frozen, in eval mode on ``device``."""
    return _ready("dino", str(value), _load_dino(str(value)), torch.device(device))


def _pixel_batches(
    bundle: ClipBundle | DinoBundle, images, batch_size: int
) -> Iterator[torch.Tensor]:
    """``images`` preprocessed by the bundle's image processor, ``batch_size`` at a time, on
    the model's device and in its dtype."""
    param = next(bundle.model.parameters())
    for i in range(0, len(images), batch_size):
        rgb = [im.convert("RGB") for im in images[i : i + batch_size]]
        batch = bundle.image_processor(images=rgb, return_tensors="pt")
        yield batch["pixel_values"].to(device=param.device, dtype=param.dtype)


@torch.no_grad()
def clip_image_embeddings(bundle: ClipBundle, images, batch_size: int = 16) -> torch.Tensor:
    """L2-normalised CLIP image embeddings ``[N, D]`` (float32, on the CPU)."""
    model = bundle.model
    out = []
    for pixels in _pixel_batches(bundle, images, batch_size):
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        out.append(model.visual_projection(pooled).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def clip_text_embeddings(bundle: ClipBundle, texts, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised CLIP text embeddings ``[N, D]``; texts are cut at CLIP's 77 tokens."""
    model = bundle.model
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = bundle.tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=77,
            return_tensors="pt",
        ).to(device)
        pooled = model.text_model(**tokens).pooler_output
        out.append(model.text_projection(pooled).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def dino_embeddings(bundle: DinoBundle, images, batch_size: int = 16) -> torch.Tensor:
    """L2-normalised CLS-token embeddings of the last layer ``[N, D]`` (DreamBench's DINO)."""
    out = [
        bundle.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()
        for pixels in _pixel_batches(bundle, images, batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)

"""A content-addressed, on-disk cache of VAE latents, shared by every run and every sweep.

An entry's name is a sha256 over everything that determines the latent: the image file's
bytes, its geometry (bucket, resize, crop), the flip, and the VAE's identity (a hash of its
weights and config). Renaming or moving images, or changing any training setting that does
not touch these, keeps the hits; editing an image or switching the VAE misses. Entries are
written atomically (temporary file + ``os.replace``), so parallel trials can fill the same
cache without locks: the worst case is two processes encoding the same image once each.

The stored tensor is the posterior mean (``latent_dist.mode()``) before scaling by the VAE's
``scaling_factor``; the dataset applies the factor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.atomic_write import atomic_path
from trainer.data.buckets import Geometry
from trainer.data.images import apply_geometry, load_rgb, to_tensor

log = logging.getLogger(__name__)

# Bump when the pixels fed to the VAE change for the same key (decoding, resampling, range).
CACHE_FORMAT_VERSION = 2  # 2: 16-bit, float and premultiplied images decoded right
_TENSOR_NAME = "latent"
_vae_identities: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def vae_identity(vae: torch.nn.Module) -> str:
    """sha256 over the VAE's state dict (names, shapes, dtypes, bytes) and its config.

    Computed once per VAE object (an SD VAE is ~330 MB to hash) and remembered while the
    object lives. Private config entries (``_name_or_path`` ...) are left out: the same
    weights loaded from another folder are the same VAE.
    """
    known = _vae_identities.get(vae)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    config = {
        k: v
        for k, v in dict(getattr(vae, "config", {}) or {}).items()
        if not str(k).startswith("_")
    }
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    identity = digest.hexdigest()
    _vae_identities[vae] = identity
    return identity


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class VaeEncoder:
    """Encodes pixel batches to unscaled latents and counts every image it encodes."""

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        self.encodes = 0

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> the posterior means [B, C, H/8, W/8], float32.

        Runs on the VAE's own device and dtype; the result stays on that device.
        """
        param = next(self.vae.parameters())
        posterior = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        self.encodes += pixels.shape[0]
        return posterior.mode().float()


@dataclass(frozen=True)
class LatentRequest:
    """One latent the dataset needs: an image under a geometry, flipped or not."""

    path: Path
    image_sha256: str
    geometry: Geometry
    flip: bool


class LatentCache:
    """Look latents up under ``<cache_dir>/latents/`` and encode the missing ones in batches."""

    def __init__(self, cache_dir: str | Path, encoder: VaeEncoder, batch_size: int = 4):
        self.root = Path(cache_dir).expanduser() / "latents"
        self.encoder = encoder
        self.batch_size = max(1, int(batch_size))
        self.hits = 0
        self.misses = 0

    @property
    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def key(self, request: LatentRequest) -> str:
        parts = {
            "format": CACHE_FORMAT_VERSION,
            "image": request.image_sha256,
            "bucket": list(request.geometry.bucket),
            "resized": list(request.geometry.resized),
            "crop": list(request.geometry.crop),
            "flip": request.flip,
            "vae": vae_identity(self.encoder.vae),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def path_for(self, key: str) -> Path:
        # Two-character fan-out keeps folders small for large data sets.
        return self.root / key[:2] / f"{key}.safetensors"

    def fetch(self, requests: Iterable[LatentRequest]) -> dict[str, torch.Tensor]:
        """The latent (CPU, float32, [C, h, w]) of each request, keyed by :meth:`key`.

        Each distinct key counts once, as a hit or as a miss; misses are encoded and stored.
        """
        wanted = {self.key(r): r for r in requests}
        latents: dict[str, torch.Tensor] = {}
        missing: list[tuple[str, LatentRequest]] = []
        for key, request in wanted.items():
            latent = self._read(key)
            if latent is None:
                missing.append((key, request))
            else:
                latents[key] = latent
        self.hits += len(latents)
        self.misses += len(missing)
        for chunk in _batches_by_bucket(missing, self.batch_size):
            pixels = torch.stack([_pixels(r) for _, r in chunk])
            encoded = self.encoder(pixels).cpu()
            for (key, request), latent in zip(chunk, encoded):
                latents[key] = latent.clone()
                self._write(key, request, latents[key])
        log.info(
            "latent cache %s: %d hits, %d misses (%d images encoded)",
            self.root,
            len(wanted) - len(missing),
            len(missing),
            len(missing),
        )
        return latents

    def _read(self, key: str) -> torch.Tensor | None:
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            return load_file(path)[_TENSOR_NAME]
        except (OSError, SafetensorError, KeyError) as err:
            log.warning("unreadable latent cache entry %s (%s): encoding it again", path, err)
            return None

    def _write(self, key: str, request: LatentRequest, latent: torch.Tensor) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": str(CACHE_FORMAT_VERSION),
            "source": str(request.path),
            "image_sha256": request.image_sha256,
            "geometry": json.dumps(
                {
                    "bucket": request.geometry.bucket,
                    "resized": request.geometry.resized,
                    "crop": request.geometry.crop,
                }
            ),
            "flip": str(request.flip),
            "vae": vae_identity(self.encoder.vae),
        }
        with atomic_path(path) as tmp:
            save_file({_TENSOR_NAME: latent.contiguous()}, str(tmp), metadata=metadata)


def _pixels(request: LatentRequest) -> torch.Tensor:
    return to_tensor(apply_geometry(load_rgb(request.path), request.geometry, request.flip))


def _batches_by_bucket(
    items: Sequence[tuple[str, LatentRequest]], batch_size: int
) -> list[list[tuple[str, LatentRequest]]]:
    """Chunks of at most ``batch_size`` items of one bucket each (one tensor per chunk)."""
    groups: dict[tuple[int, int], list[tuple[str, LatentRequest]]] = {}
    for item in items:
        groups.setdefault(item[1].geometry.bucket, []).append(item)
    return [
        group[i : i + batch_size]
        for _, group in sorted(groups.items())
        for i in range(0, len(group), batch_size)
    ]

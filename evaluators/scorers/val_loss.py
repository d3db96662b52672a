"""Validation loss: the denoising loss on fixed images, timesteps and noise; no sampling.

The training loss jumps with each step's random timestep and noise, so it cannot rank epochs.
Fixing all three (the latent is the VAE posterior's *mean*, the noise comes from a seeded
generator, the timesteps are listed in ``eval.val_timesteps``) makes the loss a deterministic
function of the weights: two calls give the same number, and a lower number means the model
predicts these images' noise better. It is computed with the LoRA at the strength being
evaluated and the training's prompt encoding (max_token_length, clip_skip).

Metric: ``val_loss`` = mean over images and timesteps of the MSE against the training target
(the noise for epsilon models, the velocity for v-prediction models).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import MutableMapping, Sequence

import torch
from PIL import Image
from torch.nn import functional as F

from evaluators.scorers.base import ScoreInputs
from trainer.data.images import to_tensor
from trainer.errors import ConfigError
from trainer.families import family_of
from trainer.families.base import Conditioning


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover ``width x height`` and crop the centre (no distortion)."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


class ValLossScorer:
    name = "val_loss"
    needs_generation = False
    random_weights = False

    def __init__(
        self,
        images: Sequence[Image.Image],
        captions: Sequence[str],
        timesteps: Sequence[int],
        seed: int,
        size: tuple[int, int],
        shared_latents: MutableMapping | None = None,
    ):
        """``shared_latents``: VAE -> {digest of the images: latents}, shared by the scorers of
        one :class:`~evaluators.model_cache.ModelPool` (a sweep builds a new scorer per trial
        while the images and the pooled base model's VAE stay the same, so only the first
        trial encodes them); default: this scorer's own."""
        if not images or len(images) != len(captions):
            raise ValueError("validation loss needs images, one caption each")
        self.size = (int(size[0]), int(size[1]))
        self.pixels = torch.stack([to_tensor(_fit(im, *size)) for im in images])
        self._digest = hashlib.sha256(self.pixels.numpy().tobytes()).hexdigest()
        self.captions = list(captions)
        self.timesteps = list(timesteps)
        self.seed = seed
        self._latents: dict[int, torch.Tensor] = {}  # id(vae) -> latents
        self._noise: dict[tuple, torch.Tensor] = {}  # latent shape -> noise per timestep
        self._shared = weakref.WeakKeyDictionary() if shared_latents is None else shared_latents

    @torch.no_grad()
    def latents(self, vae) -> torch.Tensor:
        """The images' latents under ``vae`` (posterior mean, scaled), computed once per VAE
        (shared with other scorers of the same images and pool)."""
        key = id(vae)
        if key not in self._latents:
            shared = self._shared.setdefault(vae, {})
            if self._digest not in shared:
                param = next(vae.parameters())
                pixels = self.pixels.to(param.device, param.dtype)
                mean = vae.encode(pixels).latent_dist.mean
                # As training normalises them (Flux's VAE shifts before scaling).
                shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
                scale = float(vae.config.scaling_factor)
                shared[self._digest] = (mean.float().cpu() - shift) * scale
            self._latents[key] = shared[self._digest]
        return self._latents[key]

    def noise(self, shape: torch.Size) -> torch.Tensor:
        """``[len(timesteps), *shape]`` standard normal noise from the fixed seed."""
        key = tuple(shape)
        if key not in self._noise:
            generator = torch.Generator().manual_seed(self.seed)
            self._noise[key] = torch.randn((len(self.timesteps), *shape), generator=generator)
        return self._noise[key]

    def _check_timesteps(self, scheduler) -> None:
        total = int(scheduler.config.num_train_timesteps)
        bad = [t for t in self.timesteps if not 0 <= t < total]
        if bad:
            raise ConfigError(
                f"eval.val_timesteps: {bad} out of range; allowed: 0..{total - 1} "
                "(the model's num_train_timesteps)"
            )

    @torch.no_grad()
    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        components, encode = inputs.components, inputs.encode
        if components is None or (encode is None and inputs.condition is None):
            raise ValueError("validation loss needs the model and the prompt encoder")
        family = family_of(components)  # the noise, target and forward of training
        unet = family.denoiser(components)
        self._check_timesteps(components.noise_scheduler)
        device, dtype = unet.device, unet.dtype
        latents = self.latents(components.vae)
        noise = self.noise(latents.shape)
        if inputs.condition is not None:
            conditioning = inputs.condition(self.captions)
        else:
            conditioning = Conditioning(encode(self.captions))
        # Size conditioning (SDXL's time ids) as training gives it: each image is its own
        # size, uncropped and unflipped (the scorer's images are fitted to ``size``).
        n = len(self.captions)
        sizes = {"original_sizes": [self.size] * n, "target_sizes": [self.size] * n}
        conditioning = family.condition_batch(
            components, conditioning, {**sizes, "flips": [False] * n}
        ).to(device, dtype)
        losses = []
        for i, t in enumerate(self.timesteps):
            steps = family.fixed_timesteps(components, t, latents.shape[0])
            noisy = family.add_noise(components, latents, noise[i], steps)
            target = family.training_target(components, latents, noise[i], steps)
            pred = family.predict(unet, noisy.to(device, dtype), steps.to(device), conditioning)
            losses.append(F.mse_loss(pred.float().cpu(), target.float()))
        return {"val_loss": float(torch.stack(losses).mean())}

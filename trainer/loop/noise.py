"""Pure helpers of the denoising objective: noise, timesteps, targets, min-SNR weights.

All random draws go through an explicit CPU ``torch.Generator`` and are then moved to the
device, so a run is reproducible for a given seed and identical on any device.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from trainer.device import to_device


def sample_noise(
    latents: torch.Tensor, noise_offset: float, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian noise shaped like ``latents``, plus offset noise when ``noise_offset`` > 0.

    Offset noise adds a per-sample, per-channel constant so that the model can learn to change
    the overall brightness of an image (plain noise never shifts the mean at low frequencies).
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        b, c = latents.shape[:2]
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), generator=generator)
    return to_device(noise, latents.device).to(latents.dtype)


def sample_timesteps(
    batch_size: int, num_train_timesteps: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform integer timesteps in [0, num_train_timesteps)."""
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    return to_device(t, torch.device(device))


def training_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not trainable: use epsilon or v_prediction")


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    a = alphas_cumprod[timesteps]
    return a / (1.0 - a)


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023); ones when ``gamma`` is None.

    For epsilon prediction the weight is min(SNR, gamma) / SNR; for v-prediction the loss is
    already scaled by SNR + 1, so the weight is min(SNR, gamma) / (SNR + 1).
    """
    if gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=float(gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped / s


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, in fp32 whatever the compute dtype."""
    diff = prediction.float() - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)

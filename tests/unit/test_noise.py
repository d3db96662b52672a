"""Noise, timesteps, targets and min-SNR weights of the denoising objective."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from trainer.loop.noise import (
    min_snr_weights,
    per_sample_mse,
    sample_noise,
    sample_timesteps,
    snr,
    training_target,
)
from trainer.loop.train import plan_length
from trainer.models.tiny import SCHEDULER_CONFIG


def scheduler(kind: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler.from_config({**SCHEDULER_CONFIG, "prediction_type": kind})


def test_noise_is_reproducible_and_offset_shifts_channel_means():
    latents = torch.zeros(64, 4, 8, 8)
    a = sample_noise(latents, 0.0, torch.Generator().manual_seed(1))
    b = sample_noise(latents, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(2))
    offset = sample_noise(latents, 1.0, torch.Generator().manual_seed(2))
    # The offset is constant over each (sample, channel): it adds variance to the spatial mean.
    plain_means = plain.mean(dim=(2, 3)).std()
    offset_means = offset.mean(dim=(2, 3)).std()
    assert offset_means > 3 * plain_means
    within = (offset - offset.mean(dim=(2, 3), keepdim=True)).std()
    assert within == pytest.approx(1.0, abs=0.1)


def test_timesteps_cover_the_range():
    t = sample_timesteps(5000, 1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.min() >= 0 and t.max() <= 999
    assert t.min() < 20 and t.max() > 980


def test_targets_epsilon_and_velocity():
    latents = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(training_target(scheduler("epsilon"), latents, noise, t), noise)
    s = scheduler("v_prediction")
    v = training_target(s, latents, noise, t)
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * noise - (1 - a).sqrt() * latents
    assert torch.allclose(v, expected, atol=1e-6)


def test_min_snr_weights_match_the_formula():
    s = scheduler("epsilon")
    t = torch.tensor([1, 100, 500, 999])
    ratio = snr(s, t)
    gamma = 5.0
    w = min_snr_weights(s, t, gamma)
    assert torch.allclose(w, torch.clamp(ratio, max=gamma) / ratio)
    # Low timesteps (high SNR) are damped, high timesteps (SNR < gamma) keep weight 1.
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0)
    wv = min_snr_weights(scheduler("v_prediction"), t, gamma)
    assert torch.allclose(wv, torch.clamp(ratio, max=gamma) / (ratio + 1))
    assert torch.equal(min_snr_weights(s, t, None), torch.ones(4))


def test_per_sample_mse():
    a = torch.zeros(2, 4, 2, 2)
    b = torch.ones(2, 4, 2, 2)
    b[1] *= 2
    assert per_sample_mse(a, b).tolist() == [1.0, 4.0]


@pytest.mark.parametrize(
    ("batches", "accum", "epochs", "steps", "expected"),
    [(10, 1, 4, None, (4, 40)), (10, 3, 2, None, (2, 8)), (10, 1, 99, 25, (3, 25))],
)
def test_plan_length(batches, accum, epochs, steps, expected):
    assert plan_length(batches, accum, epochs, steps) == expected

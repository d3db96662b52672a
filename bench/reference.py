"""The reference: a plain diffusers + peft LoRA loop, as diffusers' LoRA example writes one.

Written here for the comparison (not copied): what matters is that it does what that example
does per step, so that "ours vs reference" measures our loop against the common way:

* frozen UNet and text encoder stored in the mixed-precision dtype (bf16 on CUDA), the LoRA
  (``unet.add_adapter(LoraConfig(r, alpha=r, init_lora_weights="gaussian",
  target_modules=["to_k", "to_q", "to_v", "to_out.0"]))``) in fp32 master weights, the UNet
  forward under bf16 autocast (what ``accelerator.prepare`` adds), ``torch.optim.AdamW`` with
  the example's arguments (torch's default implementation: foreach on CUDA), constant LR;
* per step: the batch copied to the device (accelerate's default, a blocking copy), the text
  encoder run on the batch's token ids, noise and timesteps drawn on the device, MSE to the
  noise, backward, gradient clipping at 1.0, optimizer and scheduler step, and the loss read
  back to the host (``.item()``, as the example logs ``train_loss`` every step).

For SDXL (``tiny_sdxl``, ``sdxl_shape``) the step is diffusers' SDXL LoRA example's: both
text encoders run on the batch's ids, their penultimate hidden states concatenated, the second
encoder's pooled projection and the size numbers (square, uncropped: original = target = the
image size) as ``added_cond_kwargs``.

One difference, stated in every result: latents are precomputed once (the example encodes
every batch with the VAE), as ours are, so the comparison is of the training loops alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from peft import LoraConfig

EXAMPLE_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


@dataclass(frozen=True)
class ReferenceSettings:
    batch_size: int
    steps: int
    rank: int
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    seed: int = 42
    targets: tuple[str, ...] = EXAMPLE_TARGETS
    gradient_checkpointing: bool = False  # Flux: as ours (the example's --gradient_checkpointing)


def _text_encoders(components) -> list:
    """SD 1.x's text encoder, or SDXL's two (CLIP ViT-L, OpenCLIP ViT-bigG)."""
    second = getattr(components, "text_encoder_2", None)
    return [components.text_encoder] + ([second] if second is not None else [])


def prepare_reference(components, device: torch.device, settings: ReferenceSettings):
    """Move, cast and adapt the modules as the example does; returns (unet, text encoders,
    trainable parameters, weight dtype)."""
    weight_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet, text_encoders = components.unet, _text_encoders(components)
    for module in (unet, *text_encoders, components.vae):
        module.requires_grad_(False)
    unet.to(device, dtype=weight_dtype)
    for text_encoder in text_encoders:
        text_encoder.to(device, dtype=weight_dtype)
    trainable = add_lora_adapter(unet, settings)
    return unet, text_encoders, trainable, weight_dtype


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Index batches over shuffled epochs of ``n`` items, as a shuffling DataLoader draws them
    (a batch may span two epochs)."""
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def add_lora_adapter(model, settings) -> list:
    """peft's LoRA on ``settings.targets`` of ``model`` as diffusers' examples add it (alpha =
    rank, Gaussian init, seeded); returns its parameters, kept in fp32 (master weights)."""
    torch.manual_seed(settings.seed)
    model.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.rank,
            init_lora_weights="gaussian",
            target_modules=list(settings.targets),
        )
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.data = param.data.float()
    return trainable


def _conditioning(text_encoders, ids, latents: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
    """(encoder hidden states, added_cond_kwargs or None) of one batch, as the examples
    compute them: SD 1.x's last hidden state; SDXL's penultimate states of both encoders, the
    pooled projection and the size numbers."""
    if len(text_encoders) == 1:
        return text_encoders[0](ids, return_dict=False)[0], None
    states, pooled = [], None
    for text_encoder, batch_ids in zip(text_encoders, ids, strict=True):
        out = text_encoder(batch_ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", pooled)
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=latents.device, dtype=latents.dtype)
    added = {"text_embeds": pooled, "time_ids": time_ids.repeat(latents.shape[0], 1)}
    return torch.cat(states, dim=-1), added


def reference_training(
    components,
    latents: torch.Tensor,
    input_ids: torch.Tensor | dict[str, torch.Tensor],
    device: torch.device,
    settings: ReferenceSettings,
    on_step: Callable[[int], None] = lambda step: None,
) -> float:
    """Train for ``settings.steps`` steps; ``latents`` [N, 4, h, w] (scaled, CPU) and
    ``input_ids`` [N, 77] (CPU; SDXL: one per text encoder, by name) are sampled in shuffled
    batches. Returns the last loss."""
    unet, text_encoders, trainable, weight_dtype = prepare_reference(components, device, settings)
    id_sets = list(input_ids.values()) if isinstance(input_ids, dict) else [input_ids]
    scheduler = components.noise_scheduler
    optimizer = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
    )
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(settings.seed)
    unet.train()
    train_loss = 0.0
    batches = shuffled_batches(latents.shape[0], settings.batch_size, generator)
    for step in range(1, settings.steps + 1):
        picked = next(batches)
        batch_latents = latents[picked].to(device).to(weight_dtype)
        batch_ids = [ids[picked].to(device) for ids in id_sets]
        noise = torch.randn_like(batch_latents)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (len(picked),), device=device
        ).long()
        noisy = scheduler.add_noise(batch_latents, noise, timesteps)
        encoder_hidden_states, added = _conditioning(
            text_encoders, batch_ids if len(batch_ids) > 1 else batch_ids[0], batch_latents
        )
        with autocast:
            prediction = unet(
                noisy, timesteps, encoder_hidden_states, added_cond_kwargs=added,
                return_dict=False,
            )[0]  # fmt: skip
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        train_loss = loss.detach().item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        on_step(step)
    return train_loss

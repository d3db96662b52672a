"""The Flux reference: a plain diffusers + peft LoRA loop, as diffusers' FLUX.1 LoRA example
(``examples/dreambooth/train_dreambooth_lora_flux.py``) writes one.

Written here for the comparison (not copied); per step it does what that example does with
per-image captions (``--caption_column``) and its defaults (``--weighting_scheme none``,
``--guidance_scale 3.5``, ``--max_sequence_length 512``, no gradient checkpointing unless asked):

* frozen transformer, CLIP-L and T5 stored in the mixed-precision dtype (bf16 on CUDA), the LoRA
  (``transformer.add_adapter(LoraConfig(r, alpha=r, init_lora_weights="gaussian",
  target_modules=FLUX_EXAMPLE_TARGETS))``) in fp32 master weights, the forward under bf16
  autocast, ``torch.optim.AdamW`` (the example's betas, eps and weight decay 1e-4), constant LR;
* per step: the batch copied to the device, both text encoders run on the batch's token ids
  (CLIP-L's pooled output, T5's last hidden states, all-zero text ids), timesteps drawn
  uniformly from the scheduler's training timesteps with their sigmas, noisy latents
  ``(1 - sigma) x + sigma noise``, 2x2-packed with their image ids, the dev model's guidance,
  the transformer's prediction unpacked, MSE to ``noise - x``, backward, gradient clipping at
  1.0, optimizer and scheduler step, the loss read back to the host.

As for SD (:mod:`bench.reference`), latents are precomputed once (shifted and scaled as the
example does on every batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from diffusers.optimization import get_scheduler

from bench.reference import ReferenceSettings, add_lora_adapter, shuffled_batches

# The example's default --lora_layers (peft matches them as suffixes: the single-stream
# blocks' attn.to_q / to_k / to_v too).
FLUX_EXAMPLE_TARGETS = (
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
EXAMPLE_GUIDANCE = 3.5
EXAMPLE_WEIGHT_DECAY = 1e-4


def prepare_flux_reference(components, device: torch.device, settings: ReferenceSettings):
    """Move, cast and adapt the modules as the example does; returns (transformer, trainable
    parameters, weight dtype)."""
    weight_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    transformer = components.transformer
    encoders = (components.text_encoder, components.text_encoder_2)
    for module in (transformer, *encoders, components.vae):
        module.requires_grad_(False)
    for module in (transformer, *encoders):
        module.to(device, dtype=weight_dtype)
    if settings.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    trainable = add_lora_adapter(transformer, settings)
    return transformer, trainable, weight_dtype


def _encode(components, clip_ids: torch.Tensor, t5_ids: torch.Tensor):
    """(T5 states, CLIP pooled output, text ids) of one batch, as the example's
    ``encode_prompt`` computes them."""
    pooled = components.text_encoder(clip_ids, output_hidden_states=False).pooler_output
    states = components.text_encoder_2(t5_ids, output_hidden_states=False)[0]
    text_ids = torch.zeros(states.shape[1], 3, device=states.device, dtype=states.dtype)
    return states, pooled, text_ids


def flux_reference_training(
    components,
    latents: torch.Tensor,
    input_ids: Mapping[str, torch.Tensor],
    device: torch.device,
    settings: ReferenceSettings,
    on_step: Callable[[int], None] = lambda step: None,
) -> float:
    """Train for ``settings.steps`` steps; ``latents`` [N, 16, h, w] (shifted and scaled, CPU),
    ``input_ids`` CLIP's [N, 77] and T5's [N, L] ids (CPU, by encoder name) are sampled in
    shuffled batches. Returns the last loss."""
    transformer, trainable, weight_dtype = prepare_flux_reference(components, device, settings)
    clip_ids, t5_ids = input_ids["text_encoder"], input_ids["text_encoder_2"]
    scheduler = components.noise_scheduler
    optimizer = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, betas=(0.9, 0.999),
        weight_decay=EXAMPLE_WEIGHT_DECAY, eps=1e-8,
    )  # fmt: skip
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(settings.seed)
    schedule_timesteps = scheduler.timesteps.to(device)
    schedule_sigmas = scheduler.sigmas.to(device)
    transformer.train()
    train_loss = 0.0
    batches = shuffled_batches(latents.shape[0], settings.batch_size, generator)
    for step in range(1, settings.steps + 1):
        picked = next(batches)
        x = latents[picked].to(device).to(weight_dtype)
        b, c, h, w = x.shape
        states, pooled, text_ids = _encode(
            components, clip_ids[picked].to(device), t5_ids[picked].to(device)
        )
        noise = torch.randn_like(x)
        u = torch.rand(b, device=device)  # weighting scheme "none": uniform
        indices = (u * scheduler.config.num_train_timesteps).long()
        timesteps = schedule_timesteps[indices]
        sigmas = schedule_sigmas[indices].to(x.dtype).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * x + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, x.dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), EXAMPLE_GUIDANCE, device=device, dtype=x.dtype)
        with autocast:
            prediction = transformer(
                hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                pooled_projections=pooled, encoder_hidden_states=states, txt_ids=text_ids,
                img_ids=image_ids, return_dict=False,
            )[0]  # fmt: skip
        prediction = _unpack(prediction, h, w)
        loss = F.mse_loss(prediction.float(), (noise - x).float(), reduction="mean")
        train_loss = loss.detach().item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        on_step(step)
    return train_loss


def _unpack(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, h/2 * w/2, 4C]`` -> ``[B, C, h, w]`` (diffusers' ``_unpack_latents`` in latent
    units: it takes pixel sizes and the VAE's factor)."""
    return FluxPipeline._unpack_latents(packed, height * 8, width * 8, 8)

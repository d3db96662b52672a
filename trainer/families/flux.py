"""FLUX.1 (dev, schnell and their fine-tunes): the first flow-matching transformer family.

What differs from the SD families, and where it comes from:

* Loading: ``trainer.models.flux_loading`` (diffusers folders, hub ids, BFL's single-file
  transformer with the other parts from ``model.components``, the built-in ``tiny_flux`` and
  ``flux_shape``).
* Conditioning: CLIP ViT-L's pooled output (``pooled_projections``; its 77-token encoding) and
  T5's last hidden states over ``model.t5_max_token_length`` tokens (the sequence), with
  all-zero text position ids (``txt_ids``), as diffusers' ``FluxPipeline.encode_prompt`` and
  kohya's ``strategy_flux`` compute them. Per batch, the dev model's ``guidance`` input is
  ``model.guidance_scale`` (kohya: 1.0 for training).
* Objective: rectified flow. Sigmas in (0, 1) are drawn as ``model.timestep_sampling`` says
  (kohya's ``flux_train_utils.get_noisy_model_input_and_timesteps``), the noisy latents are
  ``(1 - sigma) * latents + sigma * noise``, the target is ``noise - latents`` and the
  prediction is used raw (kohya's recommended ``--model_prediction_type raw``). Loss weights
  by sigma: ``model.loss_weighting`` (none by default).
* The denoiser sees 2x2-packed latents (64 channels per token) with their (0, row, column)
  image ids; ``predict`` packs and unpacks, so the loop keeps its ``[B, 16, h, w]`` latents.
* LoRA: every Linear layer of the double- and single-stream blocks (kohya's ``lora_flux``
  targets ``DoubleStreamBlock`` / ``SingleStreamBlock``), named by their BFL modules under
  ``lora_unet_``; CLIP-L as ``lora_te1_``. The slices of BFL's fused qkv / linear1 (diffusers'
  separate q, k, v, MLP-in layers) train apart and are saved fused
  (``trainer.networks.fused_modules``). LyCORIS (LoKr, LoHa, DoRA) adapts the same layers, but
  a Kronecker / Hadamard product over a fused weight is not one per slice, so its files name
  the diffusers layers, ``lycoris_<path>`` (``lycoris_module_name``), as ComfyUI reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.device import to_device
from trainer.errors import ConfigError
from trainer.families.base import BucketGeometry, Conditioning, ModelFamily
from trainer.loop import noise as ddpm
from trainer.models.bfl_format import BLOCK, bfl_module
from trainer.models.flux import BASE_MODEL_VERSION  # kohya's "flux1"
from trainer.networks import lora

CLIP_LENGTH = 77
# The transformer's LyCORIS module names (see FluxFamily.lycoris_module_name).
LYCORIS_PREFIX = "lycoris"


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H/2 * W/2, 4C]`` 2x2 patches (diffusers' ``_pack_latents``)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for ``[B, C, height, width]`` latents."""
    b, _, channels = packed.shape
    c = channels // 4
    x = packed.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """``[H/2 * W/2, 3]``: (0, row, column) of each packed token."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, device, dtype)


def time_shift(mu: float, sigmas: torch.Tensor) -> torch.Tensor:
    """FLUX.1's resolution shift of sigmas: ``e^mu / (e^mu + 1/sigma - 1)``."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def flux_mu(tokens: int) -> float:
    """FLUX.1-dev's shift for ``tokens`` packed tokens: linear from 0.5 at 256 to 1.15 at 4096
    (BFL's ``get_lin_function``; kohya's ``flux_shift``)."""
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (tokens - 256)


def sample_sigmas(
    flow, batch_size: int, generator: torch.Generator, latent_shape: Sequence[int] | None
) -> torch.Tensor:
    """One training sigma per sample, drawn as ``flow.timestep_sampling`` says."""
    method = flow.timestep_sampling
    if method == "uniform":
        return torch.rand(batch_size, generator=generator)
    if method == "logit_normal":
        normal = torch.randn(batch_size, generator=generator)
        return torch.sigmoid(flow.logit_mean + flow.logit_std * normal)
    sigmas = torch.sigmoid(flow.sigmoid_scale * torch.randn(batch_size, generator=generator))
    if method == "shift":
        shift = flow.discrete_flow_shift
        return sigmas * shift / (1 + (shift - 1) * sigmas)
    if method == "flux_shift":
        if latent_shape is None:
            raise ValueError("timestep_sampling flux_shift needs the latents' shape")
        h, w = latent_shape[-2:]
        return time_shift(flux_mu((h // 2) * (w // 2)), sigmas)
    return sigmas  # sigmoid


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """SD3's per-sigma loss weights (diffusers' ``compute_loss_weighting_for_sd3``)."""
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas.float() + 2 * sigmas.float() ** 2))
    return torch.ones_like(sigmas, dtype=torch.float32)


def _encode_t5(components, prompts: list[str]) -> torch.Tensor:
    t5 = components.text_encoder_2
    ids = components.tokenizer_2(
        prompts, padding="max_length", max_length=components.flow.t5_max_token_length,
        truncation=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    return t5(ids.to(t5.device), output_hidden_states=False)[0]


def _t5_states(components, prompts: list[str]) -> torch.Tensor:
    """T5's states of ``prompts``. While CLIP-L trains (gradients on) the frozen T5's states
    are computed once per prompt and kept with the components (kohya caches the frozen
    encoders' outputs when CLIP-L trains); with gradients off the loop caches whole
    conditionings itself."""
    t5 = components.text_encoder_2
    if not torch.is_grad_enabled() or any(p.requires_grad for p in t5.parameters()):
        return _encode_t5(components, prompts)
    cache = components.extra.setdefault("t5_states", {})
    missing = sorted({p for p in prompts if p not in cache})
    if missing:
        with torch.no_grad():
            cache.update(zip(missing, _encode_t5(components, missing), strict=True))
    return torch.stack([cache[p] for p in prompts])


class FluxFamily(ModelFamily):
    name = "flux"
    base_model_version = BASE_MODEL_VERSION
    # sai-modelspec's id for FLUX.1-dev (what kohya writes: sai_model_spec.ARCH_FLUX_1_DEV).
    modelspec_architecture = "flux-1-dev"
    kohya_prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1"}
    kohya_lora_module = "networks.lora_flux"  # kohya's Flux LoRA network
    native_geometry = BucketGeometry(
        resolution=1024, min_bucket_reso=256, max_bucket_reso=2048, bucket_reso_steps=64
    )

    def load(self, settings, cache_dir: Path, device=None, dtype=None):
        from trainer.models.flux_loading import load_flux_components

        components = load_flux_components(settings, Path(cache_dir))
        if device is not None or dtype is not None:
            for module in components.modules:
                module.to(device=device, dtype=dtype)
        return components

    def denoiser(self, components) -> nn.Module:
        return components.transformer

    def text_encoders(self, components) -> dict[str, nn.Module]:
        # T5-XXL stays frozen (kohya trains it only with --train_t5xxl).
        return {"text_encoder": components.text_encoder}

    def tokenizers(self, components) -> dict[str, Any]:
        return {"text_encoder": components.tokenizer}

    # --- conditioning ----------------------------------------------------------------------

    def encode_prompts(
        self, components, prompts: Sequence[str], *, max_token_length: int, clip_skip: int
    ) -> Conditioning:
        if clip_skip != 1:
            raise ConfigError(
                f"model.clip_skip: {clip_skip!r} is not allowed for model.family flux; allowed: 1"
            )
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        clip = components.text_encoder
        clip_ids = components.tokenizer(
            prompts, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        pooled = clip(clip_ids.to(clip.device), output_hidden_states=False).pooler_output
        states = _t5_states(components, prompts)
        txt_ids = torch.zeros(*states.shape[:2], 3, device=states.device, dtype=states.dtype)
        return Conditioning(states, {"pooled_projections": pooled, "txt_ids": txt_ids})

    def condition_batch(
        self, components, conditioning: Conditioning, batch: Mapping[str, Any]
    ) -> Conditioning:
        if not components.transformer.config.guidance_embeds:
            return conditioning
        states = conditioning.hidden_states
        guidance = torch.full(
            (states.shape[0],), components.flow.guidance_scale, device=states.device,
            dtype=states.dtype,
        )  # fmt: skip
        return Conditioning(states, {**conditioning.extra, "guidance": guidance})

    # --- the training objective: rectified flow -----------------------------------------

    def sample_noise(self, latents, noise_offset, generator) -> torch.Tensor:
        return ddpm.sample_noise(latents, noise_offset, generator)

    def sample_timesteps(
        self, components, batch_size, generator, device, latent_shape=None
    ) -> torch.Tensor:
        sigmas = sample_sigmas(components.flow, batch_size, generator, latent_shape)
        return to_device(sigmas, torch.device(device))

    def fixed_timesteps(self, components, timestep: int, batch_size: int) -> torch.Tensor:
        total = components.noise_scheduler.config.num_train_timesteps
        return torch.full((batch_size,), timestep / total, dtype=torch.float32)

    def add_noise(self, components, latents, noise, timesteps) -> torch.Tensor:
        sigmas = timesteps.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
        return (1 - sigmas) * latents + sigmas * noise

    def predict(self, denoiser, noisy, timesteps, conditioning: Conditioning) -> torch.Tensor:
        extra = conditioning.extra
        height, width = noisy.shape[-2:]
        if height % 2 or width % 2:
            raise ValueError(
                f"Flux packs 2x2 latent patches: latents of {height}x{width} do not divide; "
                "images must be multiples of 16 px (data.bucket_reso_steps: a multiple of 16)"
            )
        guidance = extra.get("guidance")
        if guidance is None and denoiser.config.guidance_embeds:
            raise KeyError("this Flux transformer needs the guidance input (condition_batch)")
        out = denoiser(
            hidden_states=pack_latents(noisy),
            timestep=timesteps.to(noisy.dtype),  # sigmas; the model scales them by 1000
            guidance=guidance if denoiser.config.guidance_embeds else None,
            pooled_projections=extra["pooled_projections"],
            encoder_hidden_states=conditioning.hidden_states,
            txt_ids=extra["txt_ids"][0],
            img_ids=image_ids(height, width, noisy.device, noisy.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, height, width)

    def training_target(self, components, latents, noise, timesteps) -> torch.Tensor:
        return noise - latents

    def loss_weights(self, components, timesteps, min_snr_gamma) -> torch.Tensor:
        if min_snr_gamma is not None:
            raise ConfigError(
                f"train.min_snr_gamma: {min_snr_gamma!r} is not allowed for model.family flux; "
                "allowed: null (use model.loss_weighting)"
            )
        return loss_weighting(components.flow.loss_weighting, timesteps)

    # --- LoRA ------------------------------------------------------------------------------

    def lora_targets(self, component: str, module: nn.Module, with_conv: bool) -> dict[str, str]:
        if component == "unet":
            targets = {}
            for path, child in module.named_modules():
                if isinstance(child, nn.Linear) and BLOCK.match(path):
                    try:
                        bfl_module(path)
                    except ValueError:
                        continue
                    targets[path] = "linear"
            return dict(sorted(targets.items()))
        if component == "text_encoder":
            return lora.find_text_encoder_targets(module)
        raise self.unknown_component(component)

    def kohya_module_name(self, component: str, module_path: str) -> str:
        prefix = self.kohya_prefix(component)
        if component == "unet":
            try:
                bfl, part = bfl_module(module_path)
            except ValueError:
                # Outside the blocks kohya adapts (embedders, final layer): never in our files;
                # named by the diffusers path so that every layer has a name.
                return f"{prefix}_{module_path.replace('.', '_')}"
            # A slice of a fused BFL Linear is trained as its own module, ``_part<i>``; the
            # file holds the fused module (trainer.networks.fused_modules).
            module_path = bfl if part is None else f"{bfl}_part{part}"
        elif not module_path.startswith("text_model."):
            module_path = "text_model." + module_path  # CLIPTextModel, flat in transformers 5
        return f"{prefix}_{module_path.replace('.', '_')}"

    def diffusers_lora(self, components, state_dict: Mapping[str, torch.Tensor]) -> dict:
        """diffusers' own (peft) format: every fused BFL module split into the diffusers layers
        it stands for, alpha / rank folded into the up weights. diffusers' kohya converter
        splits ``linear1`` at FLUX.1's hard-coded widths; this split reads the widths from the
        model, so any Flux-shaped transformer (tiny_flux too) takes the file."""
        from trainer.networks.fused_modules import fused_name
        from trainer.networks.kohya_format import ALPHA_SUFFIX, DOWN_SUFFIX, UP_SUFFIX

        layers: dict[str, list[tuple[str, str, int]]] = {}  # kohya name -> parts
        for component, model in (
            ("transformer", components.transformer),
            ("text_encoder", components.text_encoder),
        ):
            kind = "unet" if component == "transformer" else component
            for path in self.lora_targets(kind, model, with_conv=False):
                out = model.get_submodule(path)
                out = getattr(out, "base_layer", out).out_features
                name = self.kohya_module_name(kind, path)
                parsed = fused_name(name)
                base, index = parsed if parsed else (name, 0)
                layers.setdefault(base, []).insert(index, (component, path, out))
        converted: dict[str, torch.Tensor] = {}
        for name in sorted({k.split(".")[0] for k in state_dict}):
            parts = layers.get(name)
            if parts is None:
                raise ValueError(f"{name}: no layer of this Flux model has that kohya name")
            down, up = state_dict[name + DOWN_SUFFIX], state_dict[name + UP_SUFFIX]
            rank = down.shape[0]
            alpha = state_dict.get(name + ALPHA_SUFFIX)
            up = up * (float(alpha) / rank if alpha is not None else 1.0)
            rows = torch.split(up, [out for _, _, out in parts], dim=0)
            for (component, path, _), block in zip(parts, rows, strict=True):
                converted[f"{component}.{path}.lora_A.weight"] = down
                converted[f"{component}.{path}.lora_B.weight"] = block
        return converted

    def lycoris_module_name(self, component: str, module_path: str) -> str:
        """LyCORIS modules adapt diffusers' separate layers (``to_q``, ``to_k``, ...): a
        Kronecker product over BFL's fused qkv / linear1 is not a set of per-layer ones, so the
        BFL names cannot hold them. The transformer's modules are named as LyCORIS' own wrapper
        (and SimpleTuner) names them, ``lycoris_`` + the diffusers path with ``_``, which
        ComfyUI's Flux key map reads (``comfy/lora.py``, ``model_lora_keys_unet``: the
        ``lycoris_`` keys of ``comfy.utils.flux_to_diffusers``, each a slice of the BFL
        weight); CLIP-L is ``lora_te1_`` as in the LoRA files."""
        if component == "unet":
            return f"{LYCORIS_PREFIX}_{module_path.replace('.', '_')}"
        return self.kohya_module_name(component, module_path)

    def lycoris_preset(self, preset: str) -> dict:
        # Imported here: lycoris-lora is only needed by the LyCORIS network types.
        from trainer.networks.lycoris_net import flux_preset

        if preset == "ia3":  # only (IA)^3 uses this preset; the check before loading says so
            from trainer.families import family_limit_problems

            raise ConfigError(family_limit_problems("flux", {"network.type": "ia3"}))
        return flux_preset(preset)

    # --- generation ------------------------------------------------------------------------

    def pipeline(self, components, scheduler=None):
        return components.to_pipeline(scheduler)

    def save_checkpoint(self, components, path, dtype=None, metadata=None) -> Path:
        """BFL's single-file transformer (what ``model.path`` reads, with ``components``)."""
        from trainer.models.bfl_format import save_bfl_transformer

        return save_bfl_transformer(components.transformer, path, dtype)

    def generation_inputs(
        self, positive: Conditioning, negative: Conditioning
    ) -> dict[str, torch.Tensor]:
        # FLUX.1-dev is guidance-distilled: no negative prompt (true CFG is off by default).
        return {
            "prompt_embeds": positive.hidden_states,
            "pooled_prompt_embeds": positive.extra["pooled_projections"],
        }

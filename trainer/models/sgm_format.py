"""SDXL's single-file layout (Stability AI's ``sgm`` code): reading and writing.

WebUI, ComfyUI and kohya's scripts exchange SDXL checkpoints as one file with the keys
``model.diffusion_model.*`` (UNet, the LDM layout plus ``label_emb``), ``first_stage_model.*``
(VAE), ``conditioner.embedders.0.transformer.text_model.*`` (CLIP ViT-L, transformers' layout)
and ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG in OpenCLIP's own layout: fused
``attn.in_proj_weight``, ``mlp.c_fc`` / ``c_proj``, ``ln_1`` / ``ln_2``, ``text_projection``
stored as ``[hidden, projection]``).

Reading maps the keys with diffusers' own conversion functions and loads every module
strictly (``ldm_format.load_strictly``), as the SD 1.x reader does. Writing is the inverse.
"""

from __future__ import annotations

import math
from pathlib import Path

import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from trainer.atomic_write import atomic_path
from trainer.errors import ConfigError
from trainer.models.ldm_format import (
    TEXT_ENCODER_PREFIX,
    _mapped,
    load_strictly,
    read_state_dict,
    text_encoder_from_ldm,
    text_encoder_to_ldm,
    unet_from_ldm,
    unet_to_ldm,
    vae_from_ldm,
    vae_to_ldm,
)

TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def is_sgm_checkpoint(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` has SDXL's two text encoders under their SGM prefixes."""
    return any(k.startswith(TE2_PREFIX) for k in checkpoint) and any(
        k.startswith(TE1_PREFIX) for k in checkpoint
    )


# --- reading -------------------------------------------------------------------------------


def text_encoder_2_from_sgm(checkpoint: dict, config: CLIPTextConfig, where: str):
    """The OpenCLIP ViT-bigG text encoder (``conditioner.embedders.1.model.*``)."""
    with init_empty_weights():
        model = CLIPTextModelWithProjection(config)
    state = _mapped(
        convert_open_clip_checkpoint, "text encoder 2", where, model, checkpoint, prefix=TE2_PREFIX
    )
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    load_strictly(model, state, f"text encoder 2 ({TE2_PREFIX}*)", where)
    return model


def read_sgm_modules(path: Path, config_dir: Path, where: str) -> tuple:
    """(unet, vae, text_encoder, text_encoder_2, scheduler config) of an SGM single file,
    with the architecture of the diffusers config folder ``config_dir``."""
    checkpoint = read_state_dict(path)
    if not is_sgm_checkpoint(checkpoint):
        raise ConfigError(
            f"model.path: {path} has no SDXL text encoders ({TE1_PREFIX}*, {TE2_PREFIX}*): not "
            "an SDXL checkpoint in the SGM layout; for an SD 1.x checkpoint use model.family: sd15"
        )
    unet_config = UNet2DConditionModel.load_config(str(config_dir), subfolder="unet")
    vae_config = AutoencoderKL.load_config(str(config_dir), subfolder="vae")
    te1_config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"))
    te2_config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder_2"))
    scheduler_config = DDPMScheduler.load_config(str(config_dir), subfolder="scheduler")
    # The text encoder reader strips TE1_PREFIX itself (diffusers' LDM_CLIP_PREFIX_TO_REMOVE).
    te1_only = {k: v for k, v in checkpoint.items() if k.startswith(TE1_PREFIX)}
    return (
        unet_from_ldm(checkpoint, unet_config, where),
        vae_from_ldm(checkpoint, vae_config, where),
        text_encoder_from_ldm(te1_only, te1_config, where),
        text_encoder_2_from_sgm(checkpoint, te2_config, where),
        scheduler_config,
    )


# --- writing -------------------------------------------------------------------------------


def text_encoder_2_to_sgm(text_encoder_2) -> dict[str, torch.Tensor]:
    """``CLIPTextModelWithProjection`` weights in OpenCLIP's layout under ``TE2_PREFIX``."""
    state = text_encoder_2.state_dict()
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        # transformers' Linear is [projection, hidden]; OpenCLIP multiplies x @ P, [hidden, proj].
        "text_projection": state["text_projection.weight"].T.contiguous(),
        # OpenCLIP's contrastive temperature, stored by SDXL checkpoints; unused for generation.
        "logit_scale": torch.tensor(math.log(100.0)),
    }
    for layer in range(text_encoder_2.config.num_hidden_layers):
        ours = f"text_model.encoder.layers.{layer}."
        theirs = f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{ours}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            for mine, open_clip in _OPEN_CLIP_LAYER.items():
                out[f"{theirs}{open_clip}.{kind}"] = state[f"{ours}{mine}.{kind}"]
    return {TE2_PREFIX + k: v for k, v in out.items()}


def sdxl_to_sgm_state_dict(components) -> dict[str, torch.Tensor]:
    """UNet, VAE and both text encoders of SDXL ``components`` in the SGM single-file layout."""
    te1 = {
        TE1_PREFIX + k.removeprefix(TEXT_ENCODER_PREFIX): v
        for k, v in text_encoder_to_ldm(components.text_encoder).items()
    }
    return {
        **unet_to_ldm(components.unet),
        **vae_to_ldm(components.vae),
        **te1,
        **text_encoder_2_to_sgm(components.text_encoder_2),
    }


def save_sgm_file(
    components,
    path: str | Path,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write SDXL ``components`` as one SGM ``.safetensors`` checkpoint (atomically);
    ``metadata`` goes into its header."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path}: an SDXL single-file checkpoint is written as .safetensors")
    state = {}
    for key, tensor in sdxl_to_sgm_state_dict(components).items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata=metadata)
    return path

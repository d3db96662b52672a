"""FLUX.1's other parts as separate single files, as kohya's ``flux_train_network.py`` takes
them (``--clip_l``, ``--t5xxl``, ``--ae``) and ComfyUI keeps them (``models/text_encoders``,
``models/vae``):

* ``model.clip_l``: CLIP ViT-L's text model in transformers' layout, ``text_model.*`` keys
  (ComfyUI's ``clip_l.safetensors``; a ``text_projection`` / ``logit_scale`` beside it is
  ignored);
* ``model.t5xxl``: T5 v1.1 XXL's encoder in transformers' layout, ``encoder.block.N.*``,
  ``encoder.final_layer_norm`` and ``shared.weight`` (comfyanonymous/flux_text_encoders'
  ``t5xxl_fp16.safetensors`` / ``t5xxl_fp8_e4m3fn.safetensors``);
* ``model.ae``: Black Forest Labs' autoencoder (``ae.safetensors``: LDM key names,
  ``encoder.down.N.block.M.*``), converted by diffusers' ``convert_ldm_vae_checkpoint``.

Each is built from the architecture of the model it joins (the tiny configs for ``tiny_flux``,
a diffusers folder's own configs, else ``model.single_file_config``'s ``text_encoder`` /
``text_encoder_2`` / ``vae`` configs, FLUX.1-dev's by default) and read by the libraries' own
loaders; a file whose keys are not that layout is refused naming the key, the file and the
layout expected.
"""

from __future__ import annotations

import logging
from pathlib import Path

import safetensors
import torch
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedModel, T5Config, T5EncoderModel

from trainer.errors import ModelLoadError
from trainer.models import flux

log = logging.getLogger(__name__)

# model key -> the FluxComponents part it replaces.
PART_KEYS = {"clip_l": "text_encoder", "t5xxl": "text_encoder_2", "ae": "vae"}

_CLIP_MARKERS = ("embeddings.token_embedding.weight", "encoder.layers.0.self_attn.q_proj.weight")
_CLIP_EXPECTED = (
    "CLIP-L text encoder keys in transformers' layout (text_model.embeddings."
    "token_embedding.weight, text_model.encoder.layers.N.*, as ComfyUI's clip_l.safetensors)"
)
_T5_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.final_layer_norm.weight")
_T5_EXPECTED = (
    "T5-XXL encoder keys in transformers' layout (shared.weight, encoder.block.N.layer.*, "
    "encoder.final_layer_norm.weight, as comfyanonymous/flux_text_encoders' "
    "t5xxl_fp16.safetensors)"
)
_AE_MARKERS = ("encoder.conv_in.weight", "decoder.conv_out.weight")
_AE_EXPECTED = (
    "BFL autoencoder keys (encoder.conv_in.weight, encoder.down.N.block.M.*, decoder.*, as "
    "black-forest-labs/FLUX.1-dev's ae.safetensors)"
)
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
# Beside CLIP's text model, files may hold what CLIPTextModel has no use for.
_CLIP_IGNORED = ("text_projection.weight", "logit_scale", "embeddings.position_ids")


def part_configs(settings) -> tuple[dict, CLIPTextConfig, T5Config]:
    """(VAE, CLIP-L, T5) architecture of the model ``settings`` describe."""
    if settings.path == flux.TINY:
        return (
            dict(flux.TINY_VAE_CONFIG),
            CLIPTextConfig(**flux.TINY_CLIP_CONFIG),
            T5Config(vocab_size=flux.T5_VOCAB_SIZE, **flux.TINY_T5_CONFIG),
        )
    from trainer.models.flux_loading import single_file_config_folder

    own = Path(settings.path).expanduser()
    if (own / "model_index.json").is_file():
        folder = own  # a diffusers Flux folder: its own architecture
    else:
        folder = single_file_config_folder(settings.single_file_config)
    try:
        _, vae, clip, t5 = flux.flux_configs(folder)
    except OSError as error:
        raise ModelLoadError(
            f"model.single_file_config: {folder}: needs vae/, text_encoder/ and text_encoder_2/ "
            f"configs to read model.clip_l / t5xxl / ae ({error})"
        ) from error
    return vae, clip, t5


def _keys(path: Path, key: str) -> list[str]:
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        raise ModelLoadError(f"{key}: {path}: not found or not a .safetensors file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (safetensors.SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"{key}: {path}: not a readable .safetensors file: {error}"
        ) from error


def _check_layout(keys: list[str], markers: tuple[str, ...], key: str, path: Path, what: str):
    """Refuse a file that lacks a layout's marker keys (with or without ``text_model.``)."""
    present = {k.removeprefix("text_model.") for k in keys}
    if all(m in present for m in markers):
        return
    seen = ", ".join(sorted(keys)[:3]) + (" ..." if len(keys) > 3 else "")
    raise ModelLoadError(f"{key}: {path}: not the expected layout; expected {what}; found {seen}")


def _from_state_dict(cls: type[PreTrainedModel], config, state: dict, key: str, path: Path):
    """``cls`` with ``state``'s weights (transformers' own loader: key nesting, tied T5
    embeddings, non-persistent buffers); a missing or misshapen weight is an error."""
    # fp8 files (t5xxl_fp8_e4m3fn.safetensors) are stored in fp8 but computed in bf16;
    # transformers cannot build a model in fp8, so the weights are upcast on reading.
    state = {k: v.to(torch.bfloat16) if v.dtype in _FP8 else v for k, v in state.items()}
    try:
        model, info = cls.from_pretrained(
            None, config=config, state_dict=state, output_loading_info=True
        )
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError(
            f"{key}: {path}: its weights do not fit the {cls.__name__} architecture "
            f"(model.single_file_config): {str(error).splitlines()[0]}"
        ) from error
    missing = sorted(info["missing_keys"])
    if missing or info["mismatched_keys"]:
        wrong = sorted(str(k) for k in info["mismatched_keys"])
        listed = ", ".join((missing + wrong)[:4]) + (" ..." if len(missing + wrong) > 4 else "")
        raise ModelLoadError(
            f"{key}: {path}: {len(missing)} weights missing and {len(wrong)} of the wrong shape "
            f"for the {cls.__name__} architecture (model.single_file_config): {listed}"
        )
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.endswith(_CLIP_IGNORED))
    if unexpected:
        log.warning("%s: %s: ignored %d keys: %s", key, path, len(unexpected), unexpected[:4])
    return model.eval()


def load_clip_l(path: Path, config: CLIPTextConfig, key: str = "model.clip_l") -> CLIPTextModel:
    from safetensors.torch import load_file

    _check_layout(_keys(path, key), _CLIP_MARKERS, key, path, _CLIP_EXPECTED)
    return _from_state_dict(CLIPTextModel, config, load_file(str(path)), key, path)


def load_t5xxl(path: Path, config: T5Config, key: str = "model.t5xxl") -> T5EncoderModel:
    from safetensors.torch import load_file

    _check_layout(_keys(path, key), _T5_MARKERS, key, path, _T5_EXPECTED)
    return _from_state_dict(T5EncoderModel, config, load_file(str(path)), key, path)


def load_ae(path: Path, config: dict, key: str = "model.ae"):
    from trainer.models.ldm_format import read_state_dict, vae_from_ldm

    _check_layout(_keys(path, key), _AE_MARKERS, key, path, _AE_EXPECTED)
    return vae_from_ldm(read_state_dict(path), config, where=f"{key}: {path}").eval()


def load_part_files(settings) -> dict[str, torch.nn.Module]:
    """The parts ``model.clip_l`` / ``t5xxl`` / ``ae`` name, by FluxComponents part."""
    given = {k: getattr(settings, k) for k in PART_KEYS if getattr(settings, k, None)}
    if not given:
        return {}
    vae_config, clip_config, t5_config = part_configs(settings)
    loaders = {
        "clip_l": lambda p: load_clip_l(p, clip_config),
        "t5xxl": lambda p: load_t5xxl(p, t5_config),
        "ae": lambda p: load_ae(p, vae_config),
    }
    return {PART_KEYS[k]: loaders[k](Path(v).expanduser()) for k, v in given.items()}

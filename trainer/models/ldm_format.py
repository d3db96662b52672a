"""The original Stable Diffusion (CompVis / LDM) single-file layout: reading and writing.

WebUI, ComfyUI and kohya's scripts exchange SD 1.x checkpoints as one file whose keys follow the
original LDM code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.transformer.text_model.*`` (CLIP text encoder).

Reading: the raw tensors are read safely, the keys are mapped by diffusers' own conversion
functions, and the weights are loaded strictly, because diffusers' ``from_single_file`` leaves
missing weights uninitialised (on the meta device, or random) instead of failing.

Writing is the inverse mapping, derived from the layout of the LDM modules:

* UNet ``input_blocks.0`` is ``conv_in``; then each down block has ``layers_per_block`` entries
  ``[resnet, (attention)]`` and, except the last block, one ``op`` downsampler entry.
  ``output_blocks`` has ``layers_per_block + 1`` entries per up block, and the upsampler sits
  after the resnet (and attention, when there is one) of each block's last entry.
* VAE decoder levels are numbered in the opposite order to diffusers' ``up_blocks``; VAE
  attention projections are 1x1 convolutions in LDM and linear layers in diffusers.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextModel

from trainer.atomic_write import atomic_path
from trainer.errors import ConfigError, ModelLoadError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_TEXT_POSITIONS = "text_model.embeddings.position_ids"


# --- reading -------------------------------------------------------------------------------


def safe_load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.ckpt``/``.pt``/``.pth`` file without executing pickled code.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; anything else
    (an instance of a custom class, a function) is refused, because unpickling it could run
    arbitrary code. A Lightning-style ``{"state_dict": {...}}`` wrapper is unwrapped.
    """
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{path}: refused to load: the checkpoint contains pickled objects other than "
            "tensors, and only tensors are accepted (unpickling them could run code). Convert "
            "it to .safetensors with a tool you trust, or use a .safetensors release of the model."
            f" Detail: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint: {error}") from error
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path}: expected a dict of tensors, found {type(loaded).__name__}")
    # Plain numbers (``global_step``, ``epoch``) may sit beside the weights; keep the tensors.
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file checkpoint: ``.safetensors``, ``.ckpt``, ``.pt``, ``.pth``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return safe_load_checkpoint(path)
    if suffix != ".safetensors":
        raise ModelLoadError(
            f"{path}: unsupported checkpoint type {suffix!r}; accepted: "
            + ", ".join(SINGLE_FILE_SUFFIXES)
        )
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError) as error:
        raise ModelLoadError(f"{path}: not a readable .safetensors file: {error}") from error


# --- converting into diffusers modules (diffusers' own key mapping, strict loading) ---


def load_strictly(model: torch.nn.Module, state: dict, part: str, where: str) -> None:
    """Load ``state`` into ``model`` (built on the meta device); any mismatch is an error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, config {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = " ..." if len(keys) > 4 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:4])}{more}")
    if problems:
        raise ModelLoadError(
            f"{where}: the {part} weights do not fit the architecture config: "
            + "; ".join(problems)
            + ". Is it an SD 1.x checkpoint in the original layout, with the architecture "
            "that the config describes (model.single_file_config)?"
        )
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()


def _mapped(function, part: str, where: str, *args, **kwargs) -> dict:
    try:
        return function(*args, **kwargs)
    except (KeyError, IndexError, ValueError, AttributeError, RuntimeError) as error:
        raise ModelLoadError(f"{where}: cannot convert the {part} weights: {error!r}") from error


def unet_from_ldm(checkpoint: dict, config: dict, where: str) -> UNet2DConditionModel:
    """The UNet of an original-layout ``checkpoint``, built from a diffusers ``config``."""
    state = _mapped(convert_ldm_unet_checkpoint, "UNet", where, checkpoint, config=config)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    load_strictly(unet, state, "UNet (model.diffusion_model.*)", where)
    return unet


def vae_from_ldm(checkpoint: dict, config: dict, where: str) -> AutoencoderKL:
    """The VAE of a full checkpoint (``first_stage_model.*``) or of a standalone VAE file."""
    if any(k.startswith("encoder.down_blocks.") for k in checkpoint):
        state = dict(checkpoint)  # a standalone VAE already in diffusers' layout
    else:
        # Standalone VAE files may carry their training loss (discriminator) and EMA copies.
        checkpoint = {
            k: v for k, v in checkpoint.items() if not k.startswith(("loss.", "model_ema"))
        }
        state = _mapped(convert_ldm_vae_checkpoint, "VAE", where, checkpoint, config=config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    load_strictly(vae, state, "VAE (first_stage_model.*)", where)
    return vae


def text_encoder_from_ldm(checkpoint: dict, config, where: str) -> CLIPTextModel:
    """The CLIP text encoder (``cond_stage_model.transformer.*``); ``config``: CLIPTextConfig."""
    state = _mapped(convert_ldm_clip_checkpoint, "text encoder", where, checkpoint)
    with init_empty_weights():
        text_encoder = CLIPTextModel(config)
    # Old checkpoints store a ``position_ids`` buffer (sometimes corrupted, as floats); the
    # model recomputes it, so it is dropped. Keys are normalised to the model's own nesting:
    # transformers >= 5.6 has no ``text_model.`` level in CLIPTextModel.
    nested = hasattr(text_encoder, "text_model")
    fixed = {}
    for key, tensor in state.items():
        key = key.removeprefix("text_model.")
        if key.endswith("embeddings.position_ids"):
            continue
        fixed[f"text_model.{key}" if nested else key] = tensor
    load_strictly(text_encoder, fixed, "text encoder (cond_stage_model.transformer.*)", where)
    return text_encoder


# --- writing -------------------------------------------------------------------------------


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, dict[str, str]]) -> str | None:
    """Map ``key`` through the longest matching diffusers prefix; ``None`` when none matches.

    ``inner[prefix]`` renames the first component(s) after the prefix (resnet/attention parts).
    """
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            for old, new in inner.get(prefix, {}).items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            return prefixes[prefix] + rest
    return None


def _unet_prefixes(config) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    per_block = config.layers_per_block
    if not isinstance(per_block, int):
        raise ConfigError(f"unet.layers_per_block: the LDM layout needs one int, got {per_block}")
    n_blocks = len(config.block_out_channels)
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
        # SDXL's size / pooled-text embedding (addition_embed_type "text_time"); absent in SD 1.x.
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
    }
    for block in range(n_blocks):
        first_input = 1 + block * (per_block + 1)
        for layer in range(per_block):
            prefixes[f"down_blocks.{block}.resnets.{layer}."] = (
                f"input_blocks.{first_input + layer}.0."
            )
            prefixes[f"down_blocks.{block}.attentions.{layer}."] = (
                f"input_blocks.{first_input + layer}.1."
            )
        if block < n_blocks - 1:
            prefixes[f"down_blocks.{block}.downsamplers.0.conv."] = (
                f"input_blocks.{first_input + per_block}.0.op."
            )
        first_output = block * (per_block + 1)
        for layer in range(per_block + 1):
            prefixes[f"up_blocks.{block}.resnets.{layer}."] = (
                f"output_blocks.{first_output + layer}.0."
            )
            prefixes[f"up_blocks.{block}.attentions.{layer}."] = (
                f"output_blocks.{first_output + layer}.1."
            )
        if block < n_blocks - 1:
            # The upsampler follows the resnet, and the attention when the block has one.
            position = 2 if "CrossAttn" in config.up_block_types[block] else 1
            prefixes[f"up_blocks.{block}.upsamplers.0.conv."] = (
                f"output_blocks.{first_output + per_block}.{position}.conv."
            )
    inner = {p: _UNET_RESNET for p in prefixes if ".resnets." in p}
    return prefixes, inner


def _vae_prefixes(config) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    n_levels = len(config.block_out_channels)
    prefixes = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_in."] = f"{part}.conv_in."
        prefixes[f"{part}.conv_out."] = f"{part}.conv_out."
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for level in range(n_levels):
        prefixes[f"encoder.down_blocks.{level}.resnets."] = f"encoder.down.{level}.block."
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0.conv."] = (
            f"encoder.down.{level}.downsample.conv."
        )
        ldm_level = n_levels - 1 - level
        prefixes[f"decoder.up_blocks.{level}.resnets."] = f"decoder.up.{ldm_level}.block."
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0.conv."] = (
            f"decoder.up.{ldm_level}.upsample.conv."
        )
    inner = {p: _VAE_ATTENTION for p in prefixes if ".attentions." in p}
    return prefixes, inner


def _to_ldm(module: torch.nn.Module, name: str, prefixes, inner, out_prefix: str) -> dict:
    converted = {}
    for key, tensor in module.state_dict().items():
        ldm_key = _rename(key, prefixes, inner)
        if ldm_key is None:
            raise ModelLoadError(
                f"{name} weight {key!r} has no place in the original SD layout (are adapters "
                "still injected? merge and unload them before saving a checkpoint)"
            )
        converted[out_prefix + ldm_key] = tensor
    return converted


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under ``model.diffusion_model.``."""
    prefixes, inner = _unet_prefixes(unet.config)
    return _to_ldm(unet, "unet", prefixes, inner, UNET_PREFIX)


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights under ``first_stage_model.``; attention projections become 1x1 convs."""
    prefixes, inner = _vae_prefixes(vae.config)
    attention = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")
    converted = {}
    for key, tensor in _to_ldm(vae, "vae", prefixes, inner, VAE_PREFIX).items():
        # A resnet's channel-changing shortcut is ``nin_shortcut`` in LDM.
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if attention.search(key) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[key] = tensor
    return converted


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP text weights under ``cond_stage_model.transformer.text_model.``.

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` level); the original
    layout always has it. The ``position_ids`` buffer is written too, as in the original
    checkpoints, for loaders that expect it.
    """
    converted = {}
    for key, tensor in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        converted[TEXT_ENCODER_PREFIX + key] = tensor
    positions = text_encoder.config.max_position_embeddings
    converted.setdefault(
        TEXT_ENCODER_PREFIX + _TEXT_POSITIONS, torch.arange(positions, dtype=torch.int64)[None]
    )
    return converted


def diffusers_to_ldm_state_dict(components) -> dict[str, torch.Tensor]:
    """UNet, VAE and text encoder of ``components`` in the original single-file layout."""
    return {
        **unet_to_ldm(components.unet),
        **vae_to_ldm(components.vae),
        **text_encoder_to_ldm(components.text_encoder),
    }


def save_single_file(
    components,
    path: str | Path,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an SD 1.x single-file checkpoint: ``.safetensors``, or ``.ckpt`` (``state_dict``).

    ``dtype`` casts floating-point weights (e.g. ``torch.float16`` halves the file).
    ``metadata`` goes into the ``.safetensors`` header (ignored for ``.ckpt``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt"):
        raise ConfigError(f"{path}: a single-file checkpoint is written as .safetensors or .ckpt")
    state = {}
    for key, tensor in diffusers_to_ldm_state_dict(components).items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    with atomic_path(path) as tmp:
        if suffix == ".safetensors":
            safetensors.torch.save_file(state, str(tmp), metadata=metadata)
        else:
            torch.save({"state_dict": state}, tmp)
    return path


def save_diffusers_folder(components, path: str | Path) -> Path:
    """Write a diffusers pipeline folder (``model_index.json`` and one folder per module)."""
    path = Path(path)
    components.to_pipeline().save_pretrained(str(path), safe_serialization=True)
    # safetensors writes each weights file through a temporary file of its own, as 0600; give
    # them the mode the umask gave every other file (model_index.json), e.g. 0644.
    mode = (path / "model_index.json").stat().st_mode & 0o777
    for weights in path.rglob("*.safetensors"):
        weights.chmod(mode)
    return path


def unet_module_to_ldm(config, module_path: str) -> str:
    """The original-layout path of the diffusers UNet module at ``module_path`` (e.g.
    ``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in`` for SDXL), the
    names kohya's SDXL LoRA files use; a ``ValueError`` for a module with no such place."""
    prefixes, inner = _unet_prefixes(config)
    renamed = _rename(module_path + ".", prefixes, inner)
    if renamed is None:
        raise ValueError(f"UNet module {module_path!r} has no place in the original layout")
    return renamed.removesuffix(".")

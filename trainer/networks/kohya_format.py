"""kohya sd-scripts' LoRA file format: key names, and .safetensors files with ``ss_`` metadata.

A kohya LoRA file holds, for every adapted module, three tensors::

    lora_unet_<module path, "." -> "_">.lora_down.weight  # [r, in] or [r, in, kh, kw]
    lora_unet_<module path, "." -> "_">.lora_up.weight    # [out, r] or [out, r, 1, 1]
    lora_unet_<module path, "." -> "_">.alpha             # 0-d; delta W is scaled by alpha/r

where the module path is the diffusers ``UNet2DConditionModel`` path (kohya trains SD 1.x on
the diffusers UNet, so no LDM renaming is involved).

Text-encoder modules use the prefix ``lora_te_`` and their path inside ``CLIPTextModel`` as
transformers 4 spelled it, which starts at ``text_model.`` (``lora_te_text_model_encoder_layers_0_
self_attn_q_proj``). Every loader of SD 1.x LoRAs (kohya, A1111/Forge, ComfyUI, diffusers) reads
these names, so they are the exchange format; peft's own names never reach the file.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from trainer.atomic_write import write_bytes
from trainer.errors import ModelLoadError

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
DOWN_SUFFIX = ".lora_down.weight"
UP_SUFFIX = ".lora_up.weight"
ALPHA_SUFFIX = ".alpha"
HASH_KEY = "sshs_model_hash"

# transformers 5 flattened CLIPTextModel (its children are embeddings/encoder/...), while the
# file format keeps the transformers 4 path, which went through ``text_model``.
_TE_ROOT = "text_model."


def kohya_module_name(component: str, module_path: str) -> str:
    """The kohya name of the module at ``module_path`` inside the UNet or the text encoder."""
    if component == "unet":
        prefix = UNET_PREFIX
    elif component == "text_encoder":
        prefix = TEXT_ENCODER_PREFIX
        if not module_path.startswith(_TE_ROOT):
            module_path = _TE_ROOT + module_path
    else:
        raise ValueError(f"component must be 'unet' or 'text_encoder', got {component!r}")
    return f"{prefix}_{module_path.replace('.', '_')}"


def lora_keys(kohya_name: str) -> tuple[str, str, str]:
    """The (down, up, alpha) state-dict keys of one module."""
    return kohya_name + DOWN_SUFFIX, kohya_name + UP_SUFFIX, kohya_name + ALPHA_SUFFIX


def _serialise(state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return save(tensors, metadata=metadata)


def _payload(blob: bytes) -> bytes:
    """The tensor bytes of a serialised safetensors file: what follows its JSON header.

    The layout is ``u64 little-endian header length | JSON header | tensor data``.
    """
    (header_len,) = struct.unpack("<Q", blob[:8])
    return blob[8 + header_len :]


def tensor_payload_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of the tensor data section of the safetensors file of ``state_dict``.

    What is hashed: the raw little-endian tensor bytes that follow the JSON header, in the
    order safetensors lays them out (it sorts tensors by dtype alignment, then by name). The
    header (names, shapes, dtypes, ``__metadata__``) is not hashed, so the hash does not
    depend on the metadata and can be stored inside it. This is how kohya computes
    ``sshs_model_hash``; a file's hash can be recomputed from the file with ``file_sha256``.
    """
    return hashlib.sha256(_payload(_serialise(state_dict, None))).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The ``sshs_model_hash`` of an existing file (sha256 of its bytes after the header),
    streamed: the file is never read into memory whole."""
    path = _existing(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else size
        if 8 + header_len > size:
            raise ModelLoadError(
                f"{path}: not a safetensors file (its header claims {header_len} bytes, the "
                f"file has {size})"
            )
        f.seek(8 + header_len)
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_lora(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
) -> str:
    """Write a kohya LoRA ``.safetensors`` file; return its ``sshs_model_hash``.

    ``metadata`` values must all be ``str`` (safetensors stores a str -> str map); the hash of
    the tensor payload is added as ``sshs_model_hash``. The file is written atomically
    (:mod:`trainer.atomic_write`): a crash or a full disk never leaves a truncated LoRA.
    """
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"LoRA metadata values must be str; not str: {bad}")
    if not state_dict:
        raise ValueError(f"refusing to write an empty LoRA state dict to {path}")
    path = Path(path)
    model_hash = tensor_payload_sha256(state_dict)
    blob = _serialise(state_dict, {**metadata, HASH_KEY: model_hash})
    write_bytes(path, blob)
    return model_hash


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, without reading its tensors.

    safetensors itself reads and checks the header (its size against the file's, at most
    100 MB), so a corrupt or hostile file is a :class:`ModelLoadError`, not a huge allocation.
    """
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(
            f"{path}: not a readable safetensors file ({e}); expected a LoRA .safetensors file"
        ) from e


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA ``.safetensors`` file: (state dict on the CPU, metadata; {} if none)."""
    path = _existing(path)
    try:
        state_dict = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a readable safetensors file: {e}") from e
    return state_dict, read_metadata(path)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"LoRA file not found: {path}")
    return path

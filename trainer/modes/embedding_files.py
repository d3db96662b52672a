"""Textual-inversion embedding files in the formats WebUI (A1111/Forge) and diffusers read.

* ``.safetensors`` (default): one tensor ``emb_params`` of shape ``[n_vectors, hidden]`` (the
  key kohya's trainer writes for SD 1.x). WebUI accepts any single-tensor file and, as for every
  embedding, triggers it by the file's name; diffusers reads it with
  ``pipe.load_textual_inversion(path, token="<penny>")`` (a single-key file otherwise takes the
  key as the token). The header's metadata also records the token, so that a later stage
  (pivotal tuning) finds it without being told.
* ``.pt``: WebUI's own training format, ``{"string_to_token": {"*": 265}, "string_to_param":
  {"*": tensor}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"}``. diffusers reads it
  and takes the token from ``name``. Read back here with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from trainer.atomic_write import atomic_path
from trainer.errors import ModelLoadError

SAFETENSORS_KEY = "emb_params"
TOKEN_METADATA = "lorasweep_token"
# WebUI writes this fixed value (the id of "*" in its tokenizer); readers ignore it.
_WEBUI_STRING_TO_TOKEN = 265


def save_embedding(
    path: str | Path,
    vectors: torch.Tensor,
    token: str,
    step: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``vectors`` ``[n, hidden]`` of ``token``; the suffix picks the format."""
    path = Path(path)
    vectors = vectors.detach().to("cpu", torch.float32).contiguous()
    if path.suffix == ".safetensors":
        meta = {**(metadata or {}), TOKEN_METADATA: token, "step": str(step)}
        with atomic_path(path) as tmp:
            safetensors.torch.save_file({SAFETENSORS_KEY: vectors}, str(tmp), metadata=meta)
    elif path.suffix == ".pt":
        data = {
            "string_to_token": {"*": _WEBUI_STRING_TO_TOKEN},
            "string_to_param": {"*": vectors},
            "name": token,
            "step": step,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
        }
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
    else:
        raise ValueError(f"{path}: embeddings are written as .safetensors or .pt")
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{path}: not a readable .safetensors embedding ({err})") from err


def _read_pickle(path: Path) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise ModelLoadError(
            f"{path}: not a readable embedding (.pt/.bin read without unpickling code: {err})"
        ) from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: holds a {type(data).__name__}, not an embedding dict")
    return data


def read_embedding(path: str | Path) -> tuple[str, torch.Tensor]:
    """``(token, vectors [n, hidden])`` from any of the formats above.

    The token is the one recorded in the file (our metadata, WebUI's ``name``, or the key of a
    diffusers single-token file); failing that, the file's stem, which is how WebUI names it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: embedding file not found")
    token = None
    if path.suffix.lower() == ".safetensors":
        tensors, metadata = _read_safetensors(path)
        token = metadata.get(TOKEN_METADATA)
    else:
        tensors = _read_pickle(path)
        if "string_to_param" in tensors:
            params = tensors["string_to_param"]
            if not isinstance(params, dict) or len(params) != 1:
                raise ModelLoadError(f"{path}: string_to_param must hold exactly one tensor")
            token = tensors.get("name") if isinstance(tensors.get("name"), str) else None
            tensors = dict(params)
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != 1:
        raise ModelLoadError(
            f"{path}: an embedding file holds one tensor ('{SAFETENSORS_KEY}', WebUI's "
            f"string_to_param, or diffusers' token key); found {sorted(tensors)}"
        )
    key, vectors = next(iter(tensors.items()))
    if token is None and key not in (SAFETENSORS_KEY, "*"):
        token = key
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2:
        raise ModelLoadError(
            f"{path}: embedding {key!r} has shape {tuple(vectors.shape)}; expected "
            "[n_vectors, hidden]"
        )
    return token or path.stem, vectors.float()

"""Placeholder tokens in every text encoder of a family that has several (SDXL: CLIP ViT-L and
OpenCLIP ViT-bigG), trained together, saved as one embedding file with a tensor per encoder.

Each (tokenizer, text encoder) pair gets its own :class:`~trainer.modes.added_tokens.AddedTokens`
with the same token names and vector count, so a caption's placeholder reaches both encoders.
The file holds one ``[n_vectors, hidden]`` tensor per encoder under the family's names
(``ModelFamily.embedding_keys``; SDXL: ``clip_l`` and ``clip_g``, the keys WebUI and ComfyUI read
in SDXL embeddings; diffusers loads each with ``load_textual_inversion(file[key], token=...,
text_encoder=..., tokenizer=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import safetensors.torch
import torch
from torch import nn

from trainer.atomic_write import atomic_path
from trainer.modes.added_tokens import AddedTokens
from trainer.modes.embedding_files import TOKEN_METADATA


class EncoderTokens:
    """The same placeholders added to each text encoder (``AddedTokens`` per encoder)."""

    def __init__(self, per_encoder: Mapping[str, AddedTokens]):
        self.per_encoder = dict(per_encoder)
        first = next(iter(self.per_encoder.values()))
        self.placeholders = first.placeholders
        self._pattern = first._pattern  # read by PlaceholderCaptions

    @classmethod
    def from_init_word(
        cls, components, family, tokens, init_word: str, n_vectors: int
    ) -> EncoderTokens:
        """Each encoder's vectors start from the init word's embeddings in that encoder."""
        tokenizers, encoders = family.tokenizers(components), family.text_encoders(components)
        return cls(
            {
                name: AddedTokens.from_init_word(
                    SimpleNamespace(tokenizer=tokenizers[name], text_encoder=encoder),
                    tokens,
                    init_word,
                    n_vectors,
                )  # fmt: skip
                for name, encoder in encoders.items()
            }
        )

    def parameters(self) -> list[nn.Parameter]:
        return [p for added in self.per_encoder.values() for p in added.parameters()]

    def expand(self, text: str) -> str:
        return next(iter(self.per_encoder.values())).expand(text)

    def vectors(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{placeholder: {component: [n, hidden]}}`` (detached copies)."""
        per = {name: added.vectors() for name, added in self.per_encoder.items()}
        return {token: {name: per[name][token] for name in per} for token in self.placeholders}

    def bake(self) -> None:
        for added in self.per_encoder.values():
            added.bake()


def save_encoder_embedding(
    path: str | Path,
    vectors: Mapping[str, torch.Tensor],
    keys: Mapping[str, str],
    token: str,
    step: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write one tensor per encoder (``keys``: component -> file key) as ``.safetensors``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: embeddings of several encoders are written as .safetensors")
    tensors = {
        keys[c]: v.detach().to("cpu", torch.float32).contiguous() for c, v in vectors.items()
    }
    meta = {**(metadata or {}), TOKEN_METADATA: token, "step": str(step)}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    return path

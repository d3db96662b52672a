"""SD 1.x prompt encoding, with prompts longer than CLIP's 75 tokens (as kohya and WebUI do).

CLIP sees at most 77 positions: ``<BOS>``, 75 tokens, ``<EOS>``. A longer prompt (150 or 225
tokens) is cut into 75-token chunks, each wrapped in its own BOS/EOS and encoded separately;
the states are then joined as ``BOS of the first chunk + 75 states per chunk + EOS of the last``,
so the UNet's cross-attention sees one sequence of ``75 * n + 2`` states. With one chunk this
is exactly the standard encoding.

``clip_skip = k > 1`` uses the output of the k-th layer from the end, passed through the final
layer norm, as WebUI and kohya do (NAI-lineage models were trained that way with k = 2).
"""

from __future__ import annotations

import torch

from trainer.errors import ConfigError

CHUNK = 75
ALLOWED_MAX_TOKEN_LENGTHS = (75, 150, 225)


def tokenize_prompts(tokenizer, prompts: list[str], max_token_length: int = 75) -> torch.Tensor:
    """Token ids ``[B, n_chunks, 77]`` with ``n_chunks = max_token_length // 75``.

    Padding uses ``tokenizer.pad_token_id`` (EOS for SD 1.x's CLIP tokenizer), as the standard
    ``padding="max_length"`` encoding does.
    """
    if max_token_length not in ALLOWED_MAX_TOKEN_LENGTHS:
        raise ConfigError(
            f"data.max_token_length: {max_token_length!r} is not allowed; allowed: "
            f"{', '.join(map(str, ALLOWED_MAX_TOKEN_LENGTHS))}"
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_token_length + 2,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    n_chunks = max_token_length // CHUNK
    content = ids[:, 1:-1].reshape(len(prompts), n_chunks, CHUNK)
    bos = torch.full((len(prompts), n_chunks, 1), tokenizer.bos_token_id, dtype=ids.dtype)
    eos = torch.full((len(prompts), n_chunks, 1), tokenizer.eos_token_id, dtype=ids.dtype)
    return torch.cat([bos, content, eos], dim=2)


def _final_layer_norm(text_encoder) -> torch.nn.Module:
    """CLIP's final LayerNorm, wherever the model nests it (flat in transformers >= 5.6,
    under ``text_model`` before; adapters may wrap the model further)."""
    for owner in (getattr(text_encoder, "text_model", None), text_encoder):
        norm = getattr(owner, "final_layer_norm", None) if owner is not None else None
        if isinstance(norm, torch.nn.Module):
            return norm
    for name, module in text_encoder.named_modules():
        if name.endswith("final_layer_norm"):
            return module
    raise TypeError(f"{type(text_encoder).__name__} has no final_layer_norm: not a CLIP model")


def _num_layers(text_encoder) -> int:
    return int(text_encoder.config.num_hidden_layers)


def encode_tokens(text_encoder, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """Hidden states ``[B, 75 * n + 2, hidden]`` for ids ``[B, n, 77]``; differentiable."""
    if input_ids.ndim == 2:
        input_ids = input_ids[:, None]
    batch, n_chunks, length = input_ids.shape
    if length != CHUNK + 2:
        raise ValueError(f"input_ids must be [B, n, {CHUNK + 2}], got {tuple(input_ids.shape)}")
    layers = _num_layers(text_encoder)
    if isinstance(clip_skip, bool) or not 1 <= clip_skip <= layers:
        raise ConfigError(
            f"model.clip_skip: {clip_skip!r} is out of range for this text encoder; "
            f"allowed: 1..{layers}"
        )
    device = next(text_encoder.parameters()).device
    flat = input_ids.reshape(batch * n_chunks, length).to(device)
    if clip_skip == 1:
        states = text_encoder(flat).last_hidden_state
    else:
        hidden = text_encoder(flat, output_hidden_states=True).hidden_states[-clip_skip]
        states = _final_layer_norm(text_encoder)(hidden)
    states = states.reshape(batch, n_chunks, length, -1)
    content = states[:, :, 1:-1].reshape(batch, n_chunks * CHUNK, -1)
    return torch.cat([states[:, 0, :1], content, states[:, -1, -1:]], dim=1)


def encode_prompts(
    tokenizer,
    text_encoder,
    prompts: list[str],
    max_token_length: int = 75,
    clip_skip: int = 1,
) -> torch.Tensor:
    """``encode_tokens(tokenize_prompts(...))``: ``[B, max_token_length + 2, hidden]``."""
    ids = tokenize_prompts(tokenizer, prompts, max_token_length)
    return encode_tokens(text_encoder, ids, clip_skip)

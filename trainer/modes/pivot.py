"""Pivotal tuning's second stage for any mode: a stage-1 embedding and captions that use it.

Stage 1 (``train=textual_inversion``) learns a placeholder token's embedding; stage 2 (LoRA or
DreamBooth) sets ``train.init_embedding`` to that file. The token goes into the tokenizer and
text encoder before training, and the captions get it as in stage 1
(``train.caption_placeholder``), so the adapter or the fine-tuned model learns around it.
"""

from __future__ import annotations

import logging
from typing import Any

from trainer.modes.added_tokens import AddedTokens, PlaceholderCaptions
from trainer.modes.embedding_files import read_embedding
from trainer.settings.read import value

log = logging.getLogger(__name__)


def load_init_embedding(components, path) -> AddedTokens:
    """The embedding file's token(s) and vectors added to ``components``."""
    token, vectors = read_embedding(path)
    log.info("init embedding %s: token %r, %d vector(s)", path, token, vectors.shape[0])
    return AddedTokens(components, {token: vectors})


def pivot_tokens(components, train_cfg: Any) -> AddedTokens | None:
    """``train.init_embedding`` loaded into ``components``, or None when it is null."""
    path = value(train_cfg, "init_embedding", None)
    return load_init_embedding(components, path) if path else None


def pivot_captions(data, tokens: AddedTokens | None, train_cfg: Any):
    """``data`` whose captions carry the stage-1 token (unchanged when there is none)."""
    if tokens is None:
        return data
    return PlaceholderCaptions(data, tokens, value(train_cfg, "caption_placeholder"))

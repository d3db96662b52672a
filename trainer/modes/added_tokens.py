"""New placeholder tokens in the tokenizer and text encoder, with trainable embedding rows.

A placeholder such as ``<penny>`` with ``n`` vectors becomes the tokens ``<penny>``,
``<penny>_1`` … ``<penny>_{n-1}`` (the names diffusers' ``load_textual_inversion`` gives a
multi-vector embedding), and a prompt's ``<penny>`` is expanded to all of them.

While training, the text encoder's token embedding is wrapped by :class:`AddedTokenEmbedding`:
the original ``nn.Embedding`` stays as it is and the new rows live in a separate parameter. The
optimizer sees only that parameter, so every other row stays bit-identical by construction (no
weight decay or adaptive step can touch them), and gradient clipping and adaptive optimizers
measure only the rows being learned. :meth:`AddedTokens.bake` then writes the rows into a
resized embedding, leaving the models as ``load_textual_inversion`` would.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from trainer.errors import ConfigError

log = logging.getLogger(__name__)


def vector_token_names(token: str, n_vectors: int) -> list[str]:
    """``"<p>", 3`` -> ``["<p>", "<p>_1", "<p>_2"]`` (diffusers' multi-vector naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, n_vectors)]


class AddedTokenEmbedding(nn.Module):
    """``base`` (untouched) for known ids, ``rows[k]`` wherever the id is ``token_ids[k]``."""

    def __init__(self, base: nn.Embedding, token_ids: Sequence[int], rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.rows = nn.Parameter(rows.detach().clone().to(base.weight.device, base.weight.dtype))
        self.register_buffer("token_ids", torch.tensor(list(token_ids)), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        known = input_ids.clamp(max=self.base.num_embeddings - 1)
        out = self.base(known)
        for k in range(self.rows.shape[0]):
            hit = (input_ids == self.token_ids[k]).unsqueeze(-1)
            out = torch.where(hit, self.rows[k].to(out.dtype), out)
        return out


class AddedTokens:
    """Placeholder tokens added to ``components``' tokenizer and text encoder."""

    def __init__(self, components, vectors: dict[str, torch.Tensor]):
        self.components = components
        self.placeholders = list(vectors)
        self.n_vectors = {token: int(v.shape[0]) for token, v in vectors.items()}
        names = [n for t, v in vectors.items() for n in vector_token_names(t, v.shape[0])]
        self.token_ids = add_to_tokenizer(components.tokenizer, names)
        te = components.text_encoder
        self.base = plain_embedding(components)
        hidden = self.base.weight.shape[1]
        rows = torch.cat([v.reshape(-1, v.shape[-1]) for v in vectors.values()])
        if rows.shape[1] != hidden:
            raise ConfigError(
                f"embedding of {self.placeholders} has {rows.shape[1]} values per vector; this "
                f"text encoder needs {hidden} (an embedding made for another model?)"
            )
        self.module = AddedTokenEmbedding(self.base, self.token_ids, rows)
        te.set_input_embeddings(self.module)
        self._pattern = re.compile(
            "|".join(re.escape(t) + r"(?!_\d)" for t in sorted(vectors, key=len, reverse=True))
        )

    @classmethod
    def from_init_word(
        cls, components, tokens: Sequence[str], init_word: str, n_vectors: int
    ) -> AddedTokens:
        """Each token's vectors start from the init word's token embeddings (cycled)."""
        ids = components.tokenizer(init_word, add_special_tokens=False).input_ids
        if not ids:
            raise ConfigError(f"train.init_word: {init_word!r} gives no token; use a real word")
        weight = plain_embedding(components).weight.detach()
        start = torch.stack([weight[ids[i % len(ids)]] for i in range(n_vectors)])
        return cls(components, {token: start for token in tokens})

    def parameters(self) -> list[nn.Parameter]:
        return [self.module.rows]

    def vectors(self) -> dict[str, torch.Tensor]:
        """Each placeholder's current vectors ``[n, hidden]`` (detached copies)."""
        out, start = {}, 0
        for token in self.placeholders:
            n = self.n_vectors[token]
            out[token] = self.module.rows[start : start + n].detach().clone()
            start += n
        return out

    def expand(self, text: str) -> str:
        """Write each placeholder as all of its vector tokens."""
        return self._pattern.sub(
            lambda m: " ".join(vector_token_names(m.group(0), self.n_vectors[m.group(0)])), text
        )

    @contextlib.contextmanager
    def base_embedding(self) -> Iterator[None]:
        """The original embedding in place (e.g. to save the model in its standard layout)."""
        te = self.components.text_encoder
        te.set_input_embeddings(self.base)
        try:
            yield
        finally:
            te.set_input_embeddings(self.module)

    def bake(self) -> None:
        """Replace the wrapper by a resized ``nn.Embedding`` holding the learned rows."""
        bake_embedding(self.components.text_encoder, self.module, len(self.components.tokenizer))


def plain_embedding(components) -> nn.Embedding:
    """The text encoder's ``nn.Embedding``; an earlier run's unbaked wrapper is baked first."""
    te = components.text_encoder
    current = te.get_input_embeddings()
    if isinstance(current, AddedTokenEmbedding):  # e.g. left by a LoRA run with init_embedding
        bake_embedding(te, current, len(components.tokenizer))
    return te.get_input_embeddings()


def bake_embedding(text_encoder, module: AddedTokenEmbedding, vocab_size: int) -> None:
    """Put ``module``'s base embedding back, resized to ``vocab_size``, with its rows in it."""
    rows, token_ids = module.rows.detach(), module.token_ids.tolist()
    text_encoder.set_input_embeddings(module.base)
    if max(token_ids) >= module.base.num_embeddings:
        text_encoder.resize_token_embeddings(vocab_size, mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for k, token_id in enumerate(token_ids):
            weight[token_id] = rows[k].to(weight.dtype)


def add_to_tokenizer(tokenizer, names: Sequence[str]) -> list[int]:
    """Add ``names`` as new tokens; their ids. Refuses words the tokenizer already knows.

    A name added earlier (a reused tokenizer) keeps its id and its rows are re-initialised.
    """
    vocab = tokenizer.get_vocab()
    added = tokenizer.get_added_vocab()
    for name in names:
        if name not in added and (name in vocab or f"{name}</w>" in vocab):
            raise ConfigError(
                f"train.tokens: {name!r} is already a word of the tokenizer, so training it "
                "would change that word everywhere; choose a new string such as '<my-subject>'"
            )
    tokenizer.add_tokens([n for n in names if n not in added])
    ids = tokenizer.convert_tokens_to_ids(list(names))
    for name, token_id in zip(names, ids, strict=True):
        if tokenizer(name, add_special_tokens=False).input_ids != [token_id]:
            raise ConfigError(f"train.tokens: {name!r} is not read as one token by the tokenizer")
    return list(ids)


class PlaceholderCaptions:
    """Training data whose captions carry the placeholder(s), expanded to their vector tokens.

    ``replace_class``: each folder's class token in a caption becomes the placeholder text (it
    is prepended when the caption lacks it); ``prepend``: always prepended; ``none``: captions
    already contain the placeholder. Regularisation images keep their captions. Every other
    attribute is the wrapped data's.
    """

    def __init__(self, data, tokens: AddedTokens, how: str):
        self._data, self._tokens, self._how = data, tokens, how
        self._text = " ".join(tokens.placeholders)
        self._class_of = {str(s.item.path): s.item.class_token for s in data.samples}
        if how == "none":
            missing = [
                s.item.path
                for s in data.samples
                if not s.item.is_reg and not tokens._pattern.search(s.item.caption)
            ]
            if missing:
                log.warning(
                    "caption_placeholder=none, but %d captions have none of %s (e.g. %s)",
                    len(missing),
                    tokens.placeholders,
                    missing[0],
                )

    def __getattr__(self, name: str):
        return getattr(self._data, name)

    def caption(self, caption: str, class_token: str, is_reg: bool) -> str:
        if is_reg or not caption:  # dropped captions stay unconditional
            return caption
        if self._how == "replace_class" and class_token and class_token in caption:
            caption = caption.replace(class_token, self._text)
        elif self._how in ("replace_class", "prepend"):
            caption = f"{self._text}, {caption}"
        return self._tokens.expand(caption)

    def batches(self, epoch: int):
        for batch in self._data.batches(epoch):
            flags = [bool(x) for x in batch["is_reg"]]
            batch["captions"] = [
                self.caption(c, self._class_of.get(p, ""), reg)
                for c, p, reg in zip(batch["captions"], batch["paths"], flags, strict=True)
            ]
            yield batch

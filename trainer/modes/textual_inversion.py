"""``train=textual_inversion``: learn new token embeddings.

Each placeholder in ``train.tokens`` becomes ``num_vectors_per_token`` new tokens whose rows
start from ``train.init_word``'s embedding (or from ``train.init_embedding`` to continue a
previous run); only those rows are trained, every other weight of every model stays as it was
(see ``added_tokens``). Captions get the placeholder as ``train.caption_placeholder`` says.

Per saved epoch each placeholder is written in WebUI's embedding format
(``train.embedding_format``: ``safetensors`` -> ``<run>-<epoch>.safetensors`` with
``emb_params``, or WebUI's ``.pt``); with several placeholders the others go to
``<run>-<epoch>.<k>.<ext>`` (k = 1, 2, ...). WebUI triggers an embedding by its file name;
diffusers loads it with ``pipe.load_textual_inversion(path, token="<penny>")``.

Afterwards the components hold the learned tokens, as ``load_textual_inversion`` would leave
them (tokenizer with the new tokens, resized text-encoder embedding).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from trainer.errors import ConfigError
from trainer.families import family_of
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import TrainResult
from trainer.modes import common
from trainer.modes.added_tokens import AddedTokens, PlaceholderCaptions
from trainer.modes.embedding_files import read_embedding, save_embedding
from trainer.modes.encoder_tokens import EncoderTokens, save_encoder_embedding
from trainer.modes.settings import TextualInversionSettings

log = logging.getLogger(__name__)


def train_textual_inversion(
    run: common.Run, callbacks: Iterable[TrainingCallback] = ()
) -> TrainResult:
    """Learn the embedding(s) of ``train.tokens`` on the run's data; save them per epoch."""
    s, spec, components = run.spec.mode, run.spec, run.components
    family = family_of(components)
    if family.embedding_keys is not None:
        return _train_encoder_tokens(run, family, callbacks)
    added = _add_tokens(components, s)
    if spec.data.reg_dir:
        log.info("data.reg_dir is not used: textual inversion changes no model weight")
    data = PlaceholderCaptions(common.build_data(run, None), added, s.caption_placeholder)
    opt = common.optimizer_view(spec.optimizer, s.learning_rate, s.learning_rate)
    torch.manual_seed(spec.train.seed)
    optimizer = common.make_optimizer(run, opt, ([], added.parameters()))
    suffix = f".{s.embedding_format}"

    def save_epoch(epoch: int, step: int, is_last: bool) -> Path:
        stem = common.epoch_stem(spec.run_name, epoch, is_last)
        meta = common.base_metadata(run, "textual_inversion", epoch, step)
        paths = []
        for k, (token, vectors) in enumerate(added.vectors().items()):
            name = stem if k == 0 else f"{stem}.{k}"
            paths.append(
                save_embedding(run.output_dir / f"{name}{suffix}", vectors, token, step, meta)
            )
        log.info("saved epoch %d (step %d): %s", epoch, step, ", ".join(map(str, paths)))
        return paths[0]

    try:
        result = common.train_loop(run, data, optimizer, opt, True, save_epoch, callbacks)
    finally:
        added.bake()
        components.text_encoder.eval()
    return result


def _train_encoder_tokens(run: common.Run, family, callbacks) -> TrainResult:
    """Textual inversion in every text encoder of the family (SDXL: both), one file per
    placeholder and saved epoch with a tensor per encoder (``family.embedding_keys``)."""
    s, spec, components = run.spec.mode, run.spec, run.components
    added = EncoderTokens.from_init_word(
        components, family, s.tokens, s.init_word, s.num_vectors_per_token
    )
    data = PlaceholderCaptions(common.build_data(run, None), added, s.caption_placeholder)
    opt = common.optimizer_view(spec.optimizer, s.learning_rate, s.learning_rate)
    torch.manual_seed(spec.train.seed)
    optimizer = common.make_optimizer(run, opt, ([], added.parameters()))

    def save_epoch(epoch: int, step: int, is_last: bool) -> Path:
        stem = common.epoch_stem(spec.run_name, epoch, is_last)
        meta = common.base_metadata(run, "textual_inversion", epoch, step)
        paths = [
            save_encoder_embedding(
                run.output_dir / f"{stem if k == 0 else f'{stem}.{k}'}.safetensors",
                vectors,
                family.embedding_keys,
                token,
                step,
                meta,
            )  # fmt: skip
            for k, (token, vectors) in enumerate(added.vectors().items())
        ]
        log.info("saved epoch %d (step %d): %s", epoch, step, ", ".join(map(str, paths)))
        return paths[0]

    try:
        return common.train_loop(run, data, optimizer, opt, True, save_epoch, callbacks)
    finally:
        added.bake()
        for encoder in family.text_encoders(components).values():
            encoder.eval()


def _add_tokens(components, s: TextualInversionSettings) -> AddedTokens:
    if s.init_embedding is None:
        return AddedTokens.from_init_word(
            components, s.tokens, s.init_word, s.num_vectors_per_token
        )
    token, vectors = read_embedding(s.init_embedding)
    if len(s.tokens) != 1:
        raise ConfigError(
            f"train.tokens: {list(s.tokens)!r}; continuing from train.init_embedding "
            f"({s.init_embedding}) needs exactly one token"
        )
    if vectors.shape[0] != s.num_vectors_per_token:
        log.info(
            "train.init_embedding has %d vectors: num_vectors_per_token=%d is not used",
            vectors.shape[0],
            s.num_vectors_per_token,
        )
    log.info("continuing %s (token %r in the file) as %r", s.init_embedding, token, s.tokens[0])
    return AddedTokens(components, {s.tokens[0]: vectors})

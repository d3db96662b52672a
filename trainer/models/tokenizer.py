"""The CLIP BPE tokenizer, built offline from the vocabulary file in the open_clip_torch wheel.

SD 1.x uses OpenAI's CLIP tokenizer (49,408 tokens, 77 positions). Its byte-pair merges ship
inside ``open_clip_torch`` as ``bpe_simple_vocab_16e6.txt.gz``; the vocabulary is derived from
them in CLIP's documented order: the 256 byte symbols, the same with ``</w>``, one token per
merge, then ``<|startoftext|>`` and ``<|endoftext|>``. Only the data file is read: open_clip
itself is never imported (it needs torchvision, which has no CPU build on our machines).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
_N_MERGES = VOCAB_SIZE - 2 * 256 - 2
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


class TokenizerUnavailableError(RuntimeError):
    """The CLIP vocabulary file could not be found."""


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode symbols, in CLIP's vocabulary order.

    Printable bytes map to themselves and come first; the other bytes follow, mapped to 256+.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailableError(
            "The CLIP BPE vocabulary comes from the open_clip_torch wheel, which is not "
            "installed. "
            "Install it without its dependencies: pip install --no-deps open_clip_torch==3.3.0 "
            "(`make setup` does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _BPE_FILE
    if not path.is_file():
        raise TokenizerUnavailableError(f"{path} is missing from the open_clip_torch package.")
    return path


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    with gzip.open(bpe_vocab_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise TokenizerUnavailableError(f"built {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(directory: str | Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def build_clip_tokenizer() -> CLIPTokenizer:
    """OpenAI's CLIP tokenizer (as SD 1.x uses it), built with no network."""
    vocab, merges = _vocab_and_merges()
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=MODEL_MAX_LENGTH)

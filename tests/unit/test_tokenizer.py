"""The offline CLIP tokenizer gives OpenAI CLIP's ids and round-trips through its files."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from trainer.models.tokenizer import build_clip_tokenizer, write_clip_tokenizer_files

# Ids from OpenAI's CLIP tokenizer (as SD 1.x's tokenizer/vocab.json assigns them).
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "hello world": [49406, 3306, 1002, 49407],
    "cat, dog": [49406, 2368, 267, 1929, 49407],
    "A PHOTO OF A CAT": [49406, 320, 1125, 539, 320, 2368, 49407],  # CLIP lower-cases
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


@pytest.mark.parametrize("prompt", sorted(KNOWN_IDS))
def test_known_clip_ids(tokenizer, prompt):
    assert tokenizer(prompt).input_ids == KNOWN_IDS[prompt]


def test_special_tokens_and_sizes(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    # SD 1.x pads with EOS: the standard max_length encoding ends in a run of 49407.
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[7:] == [49407] * 70


def test_written_files_load_as_the_same_tokenizer(tokenizer, tmp_path):
    folder = write_clip_tokenizer_files(tmp_path / "tokenizer")
    loaded = CLIPTokenizer.from_pretrained(str(folder))
    prompts = [*KNOWN_IDS, "masterpiece, best quality, 1girl, looking at viewer, ünïcode"]
    assert loaded(prompts).input_ids == tokenizer(prompts).input_ids
    assert loaded.pad_token_id == tokenizer.pad_token_id == 49407

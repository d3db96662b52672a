"""Long-prompt tokenisation (75-token chunks) and chunked CLIP encoding with clip skip."""

from __future__ import annotations

import pytest
import torch

from trainer.errors import ConfigError
from trainer.models.text_encoding import encode_prompts, encode_tokens, tokenize_prompts
from trainer.models.tiny import build_tiny_components

BOS, EOS, CAT, DOG = 49406, 49407, 2368, 1929
LONG = "cat " * 75 + "dog " * 10  # 85 content tokens: the dogs start at token 76


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


def test_75_equals_the_standard_encoding(tiny):
    prompts = ["a photo of a cat", LONG, "", "masterpiece, best quality, " * 20]
    standard = tiny.tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    ids = tokenize_prompts(tiny.tokenizer, prompts, 75)
    assert ids.shape == (4, 1, 77) and ids.dtype == torch.long
    assert torch.equal(ids[:, 0], standard)


@pytest.mark.parametrize("max_len, chunks", [(150, 2), (225, 3)])
def test_chunk_shapes_and_wrapping(tiny, max_len, chunks):
    ids = tokenize_prompts(tiny.tokenizer, ["a photo of a cat", LONG], max_len)
    assert ids.shape == (2, chunks, 77)
    assert (ids[:, :, 0] == BOS).all() and (ids[:, :, -1] == EOS).all()


def test_second_chunk_carries_the_tokens_past_75(tiny):
    ids = tokenize_prompts(tiny.tokenizer, [LONG], 150)[0]
    assert ids[0, 1:76].tolist() == [CAT] * 75
    # Chunk 2: BOS, the 10 dogs, the prompt's EOS, then EOS padding.
    assert ids[1, :11].tolist() == [BOS] + [DOG] * 10
    assert ids[1, 11:].tolist() == [EOS] * 66
    # With 75 tokens the dogs are truncated away.
    assert DOG not in tokenize_prompts(tiny.tokenizer, [LONG], 75).flatten().tolist()


@pytest.mark.parametrize("bad", [0, 76, 100, 300])
def test_max_token_length_must_be_a_multiple_of_75_up_to_225(tiny, bad):
    with pytest.raises(ConfigError, match=r"data\.max_token_length: .*allowed: 75, 150, 225"):
        tokenize_prompts(tiny.tokenizer, ["a cat"], bad)


@torch.no_grad()
def test_one_chunk_without_skip_is_the_last_hidden_state(tiny):
    ids = tokenize_prompts(tiny.tokenizer, ["a photo of a cat", LONG], 75)
    expected = tiny.text_encoder(ids[:, 0]).last_hidden_state
    assert torch.equal(encode_tokens(tiny.text_encoder, ids, clip_skip=1), expected)


@torch.no_grad()
def test_clip_skip_2_is_the_normed_penultimate_layer(tiny):
    ids = tokenize_prompts(tiny.tokenizer, ["a photo of a cat"], 75)
    out = tiny.text_encoder(ids[:, 0], output_hidden_states=True)
    expected = tiny.text_encoder.final_layer_norm(out.hidden_states[-2])
    got = encode_tokens(tiny.text_encoder, ids, clip_skip=2)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, out.last_hidden_state)


@torch.no_grad()
def test_chunks_are_joined_bos_contents_eos(tiny):
    ids = tokenize_prompts(tiny.tokenizer, [LONG, "a photo of a dog"], 150)
    states = encode_tokens(tiny.text_encoder, ids)
    assert states.shape == (2, 152, 32)
    first = tiny.text_encoder(ids[:, 0]).last_hidden_state
    second = tiny.text_encoder(ids[:, 1]).last_hidden_state
    assert torch.equal(states[:, 0], first[:, 0])
    assert torch.equal(states[:, 1:76], first[:, 1:76])
    assert torch.equal(states[:, 76:151], second[:, 1:76])
    assert torch.equal(states[:, 151], second[:, 76])


def test_encoding_is_differentiable(tiny):
    embedding = tiny.text_encoder.embeddings.token_embedding.weight
    embedding.grad = None
    encode_prompts(
        tiny.tokenizer, tiny.text_encoder, [LONG], 150, clip_skip=2
    ).square().mean().backward()
    assert embedding.grad is not None
    assert embedding.grad[DOG].abs().sum() > 0  # a token of the second chunk got a gradient
    embedding.grad = None


@pytest.mark.parametrize("clip_skip", [0, 4])
def test_clip_skip_out_of_range(tiny, clip_skip):
    ids = tokenize_prompts(tiny.tokenizer, ["a cat"], 75)
    with pytest.raises(ConfigError, match=r"model\.clip_skip: .*allowed: 1\.\.3"):
        encode_tokens(tiny.text_encoder, ids, clip_skip=clip_skip)


def test_encode_prompts_composes_both(tiny):
    prompts = ["a photo of a cat", LONG]
    with torch.no_grad():
        direct = encode_prompts(tiny.tokenizer, tiny.text_encoder, prompts, 225, clip_skip=3)
        composed = encode_tokens(
            tiny.text_encoder, tokenize_prompts(tiny.tokenizer, prompts, 225), clip_skip=3
        )
    assert direct.shape == (2, 227, 32) and torch.equal(direct, composed)

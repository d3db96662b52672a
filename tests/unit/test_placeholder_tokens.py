"""Placeholder tokens, caption rewriting and WebUI embedding files (no training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer.errors import ConfigError, ModelLoadError
from trainer.models.tiny import build_tiny_components
from trainer.models.tokenizer import build_clip_tokenizer
from trainer.modes.added_tokens import (
    AddedTokens,
    PlaceholderCaptions,
    add_to_tokenizer,
    vector_token_names,
)
from trainer.modes.embedding_files import read_embedding, save_embedding


def test_vector_token_names_follow_diffusers():
    assert vector_token_names("<p>", 1) == ["<p>"]
    assert vector_token_names("<p>", 3) == ["<p>", "<p>_1", "<p>_2"]


def test_known_words_are_refused_and_new_tokens_are_single_ids():
    tokenizer = build_clip_tokenizer()
    for word in ("cat", "dog"):
        with pytest.raises(ConfigError, match=f"'{word}' is already a word"):
            add_to_tokenizer(tokenizer, [word])
    ids = add_to_tokenizer(tokenizer, ["<penny>", "<penny>_1"])
    assert ids == [49408, 49409]
    assert add_to_tokenizer(tokenizer, ["<penny>"]) == [49408]  # reused, not added twice
    assert len(tokenizer) == 49410


def test_added_rows_replace_only_their_tokens_and_bake_like_diffusers():
    c = build_tiny_components()
    base_weight = c.text_encoder.get_input_embeddings().weight.detach().clone()
    added = AddedTokens.from_init_word(c, ["<penny>"], "tabby cat", n_vectors=3)
    cat_ids = c.tokenizer("tabby cat", add_special_tokens=False).input_ids
    expected_start = base_weight[[cat_ids[0], cat_ids[1], cat_ids[0]]]  # the word is cycled
    assert torch.equal(added.vectors()["<penny>"], expected_start)
    assert added.expand("a <penny>, <penny>_1 x") == "a <penny> <penny>_1 <penny>_2, <penny>_1 x"
    ids = torch.tensor([[49406, 320, 49408, 49409, 49410, 49407]])
    out = c.text_encoder.get_input_embeddings()(ids)[0]
    assert torch.equal(out[1], base_weight[320]) and torch.equal(out[2:5], expected_start)
    with torch.no_grad():
        added.module.rows.add_(1.0)
    added.bake()
    weight = c.text_encoder.get_input_embeddings().weight
    assert isinstance(c.text_encoder.get_input_embeddings(), torch.nn.Embedding)
    assert weight.shape[0] == 49411 and torch.equal(weight[:49408], base_weight)
    assert torch.equal(weight[49408:], expected_start + 1.0)

    # A later run on the same models finds an unbaked wrapper (e.g. a LoRA run's): baked first.
    second = AddedTokens.from_init_word(c, ["<kit>"], "dog", n_vectors=1)
    third = AddedTokens.from_init_word(c, ["<pup>"], "dog", n_vectors=1)
    embedding = c.text_encoder.get_input_embeddings()
    assert embedding.base.weight.shape[0] == 49412 and third.token_ids == [49412]
    assert torch.equal(embedding.base.weight[49411], second.vectors()["<kit>"][0])
    assert torch.equal(embedding.base.weight[:49408], base_weight)


def _fake_data(samples, captions, paths, is_reg):
    def batches(epoch):
        yield {"captions": list(captions), "paths": list(paths), "is_reg": torch.tensor(is_reg)}

    return SimpleNamespace(samples=samples, batches=batches, batches_per_epoch=1)


def test_placeholder_captions_replace_prepend_and_keep_reg():
    c = build_tiny_components()
    added = AddedTokens.from_init_word(c, ["<kit>"], "cat", n_vectors=2)
    items = [
        SimpleNamespace(item=SimpleNamespace(path=p, class_token=t, caption=cap, is_reg=r))
        for p, t, cap, r in (
            ("a.png", "chelsea cat", "chelsea cat, sitting", False),
            ("b.png", "chelsea cat", "a sofa", False),
            ("r.png", "cat", "cat", True),
            ("d.png", "chelsea cat", "", False),
        )
    ]
    captions = [s.item.caption for s in items]
    paths = [s.item.path for s in items]
    flags = [s.item.is_reg for s in items]
    replaced = PlaceholderCaptions(
        _fake_data(items, captions, paths, flags), added, "replace_class"
    )
    (batch,) = replaced.batches(1)
    assert batch["captions"] == ["<kit> <kit>_1, sitting", "<kit> <kit>_1, a sofa", "cat", ""]
    assert replaced.batches_per_epoch == 1  # everything else is the wrapped data's
    prepended = PlaceholderCaptions(_fake_data(items, captions, paths, flags), added, "prepend")
    (batch,) = prepended.batches(1)
    assert batch["captions"][0] == "<kit> <kit>_1, chelsea cat, sitting"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_embedding_files_round_trip(tmp_path, suffix):
    vectors = torch.randn(3, 32)
    path = save_embedding(tmp_path / f"emb{suffix}", vectors, "<penny>", step=7)
    token, read = read_embedding(path)
    assert token == "<penny>" and torch.equal(read, vectors)
    if suffix == ".pt":
        raw = torch.load(path, weights_only=True)
        assert raw["name"] == "<penny>" and raw["step"] == 7
        assert torch.equal(raw["string_to_param"]["*"], vectors)


def test_foreign_embeddings_and_bad_files(tmp_path):
    import safetensors.torch

    safetensors.torch.save_file({"<cat-toy>": torch.ones(32)}, str(tmp_path / "d.safetensors"))
    token, vectors = read_embedding(tmp_path / "d.safetensors")
    assert token == "<cat-toy>" and vectors.shape == (1, 32)
    safetensors.torch.save_file(
        {"emb_params": torch.ones(2, 32)}, str(tmp_path / "kohya.safetensors")
    )
    assert read_embedding(tmp_path / "kohya.safetensors")[0] == "kohya"  # WebUI: the file name
    safetensors.torch.save_file(
        {"a": torch.ones(2), "b": torch.ones(2)}, str(tmp_path / "two.safetensors")
    )
    with pytest.raises(ModelLoadError, match="two.safetensors: an embedding file holds one"):
        read_embedding(tmp_path / "two.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="junk.pt"):
        read_embedding(tmp_path / "junk.pt")
    c = build_tiny_components()
    with pytest.raises(ConfigError, match="needs 32"):
        AddedTokens(c, {"<x>": torch.ones(1, 768)})

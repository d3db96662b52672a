"""train=textual_inversion on the tiny model, and pivotal tuning's second stage from its file."""

from __future__ import annotations

import torch

import trainer.models.text_encoding as text_encoding
from trainer.models.loading import load_model
from trainer.models.tiny import build_tiny_components
from trainer.modes.embedding_files import read_embedding, save_embedding
from trainer.run import train_from_config

TOKEN = "<chelsea-cat>"
PROMPT = f"a photo of {TOKEN}, sitting"


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(before: dict, module) -> bool:
    after = module.state_dict()
    return before.keys() == after.keys() and all(
        torch.equal(v, after[k]) for k, v in before.items()
    )


def _te_states(pipe, prompt: str) -> torch.Tensor:
    """What a diffusers pipeline feeds the UNet for ``prompt`` (multi-vector tokens expanded)."""
    text = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state


def _record_captions(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = text_encoding.tokenize_prompts

    def recording(tokenizer, prompts, max_token_length=75):
        seen.extend(prompts)
        return real(tokenizer, prompts, max_token_length)

    # The model family encodes prompts through text_encoding.encode_prompts, which tokenizes.
    monkeypatch.setattr(text_encoding, "tokenize_prompts", recording)
    return seen


def test_textual_inversion_trains_only_new_rows_and_loads_in_diffusers(
    compose, tmp_path, monkeypatch
):
    captions = _record_captions(monkeypatch)
    model = build_tiny_components()
    unet, vae, te = _state(model.unet), _state(model.vae), _state(model.text_encoder)
    key = "embeddings.token_embedding.weight"
    cfg = compose(
        "train=textual_inversion",
        "train.max_train_steps=3",
        "train.batch_size=2",
        "train.num_vectors_per_token=2",
        "train.learning_rate=0.05",
        # Decoupled weight decay would move every row it were given: only new rows get it.
        "+optimizer.args.weight_decay=0.5",
        "run_name=stage1",
    )
    result = train_from_config(cfg, components=model)

    assert f"{TOKEN} {TOKEN}_1" in captions[0] and "chelsea cat" not in captions[0]
    weight = model.text_encoder.get_input_embeddings().weight
    assert weight.shape == (49410, 32)
    assert torch.equal(weight[:49408], te[key])  # every other row bit-identical
    cat = te[key][model.tokenizer("cat", add_special_tokens=False).input_ids[0]]
    assert not torch.equal(weight[49408], cat) and not torch.equal(weight[49409], cat)
    te_rest = {k: v for k, v in te.items() if k != key}
    assert all(torch.equal(v, model.text_encoder.state_dict()[k]) for k, v in te_rest.items())
    assert _same(unet, model.unet) and _same(vae, model.vae)

    path = result.saved[-1].path
    assert path.name == "stage1.safetensors"
    token, vectors = read_embedding(path)
    assert token == TOKEN and torch.equal(vectors, weight[49408:].detach())

    # diffusers loads the WebUI file (and WebUI's .pt, which names its token) and encodes the
    # prompt exactly as the trained text encoder does.
    trained = _te_states(model.to_pipeline(), PROMPT)
    for file, given in (
        (path, TOKEN),
        (save_embedding(tmp_path / "e.pt", vectors, TOKEN, 3), None),
    ):
        pipe = build_tiny_components().to_pipeline()
        pipe.load_textual_inversion(str(file), token=given)
        assert (trained - _te_states(pipe, PROMPT)).abs().max() <= 1e-6

    # Pivotal tuning, stage 2 (DreamBooth, frozen TE) from the stage-1 file.
    captions.clear()
    cfg = compose(
        "+experiment=pivotal_tuning",
        f"train.init_embedding={path}",
        "train.max_train_steps=1",
        "train.batch_size=2",
        "train.save_precision=float",
        "run_name=stage2",
    )
    stage2 = train_from_config(cfg, components=build_tiny_components())
    assert f"{TOKEN} {TOKEN}_1" in captions[0]
    emb_token, emb = read_embedding(tmp_path / "out" / "stage2-emb.safetensors")
    assert emb_token == TOKEN and torch.equal(emb, vectors)
    loaded = load_model(
        {"path": str(stage2.saved[-1].path), "single_file_config": "tiny"}, tmp_path / "c"
    )
    assert loaded.text_encoder.get_input_embeddings().weight.shape[0] == 49408

    # ... or a LoRA.
    captions.clear()
    cfg = compose(
        f"train.init_embedding={path}", "train.max_train_steps=1", "run_name=stage2_lora"
    )
    train_from_config(cfg, components=build_tiny_components())
    assert captions and all(f"{TOKEN} {TOKEN}_1" in c for c in captions)

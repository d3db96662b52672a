"""train=dreambooth on the tiny model: class images made once, full fine-tuning, saved files."""

from __future__ import annotations

import torch

from trainer.models.loading import load_model
from trainer.models.text_encoding import encode_prompts
from trainer.models.tiny import build_tiny_components
from trainer.modes import class_images
from trainer.networks.kohya_format import read_lora
from trainer.run import train_from_config

DREAMBOOTH = (
    "train=dreambooth",
    "train.batch_size=2",
    "train.learning_rate=1e-3",
    "train.save_precision=float",
    "train.prior_preservation=true",
    "train.class_prompt=cat",
    "train.num_class_images=3",
    "train.class_sample_steps=2",
)


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def _unet_out(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([100, 700]), cond).sample


def test_dreambooth_generates_class_images_once_trains_and_saves(compose, tmp_path, monkeypatch):
    seeds_drawn = []
    real_generate = class_images._generate

    def counting_generate(pipe, prompt, seeds, *args):
        seeds_drawn.extend(seeds)
        return real_generate(pipe, prompt, seeds, *args)

    monkeypatch.setattr(class_images, "_generate", counting_generate)
    reg = tmp_path / "reg"
    base = build_tiny_components()
    tuned = build_tiny_components()
    unet_before, te_before = _state(tuned.unet), _state(tuned.text_encoder)
    cfg = compose(
        *DREAMBOOTH,
        f"data.reg_dir={reg}",
        "train.max_train_steps=2",
        "train.train_text_encoder=true",
        "train.save_lora_dim=2",
        "run_name=first",
    )
    first = train_from_config(cfg, components=tuned)

    made = sorted((reg / "1_cat").iterdir())
    assert [p.name for p in made] == ["class-00000.png", "class-00001.png", "class-00002.png"]
    assert seeds_drawn == [0, 1, 2]
    assert first.cache_stats == {"hits": 0, "misses": 9}  # 6 training + 3 class images
    # Full fine-tuning: every UNet weight moves; the text encoder too when it is trained.
    assert _changed(unet_before, tuned.unet) == set(unet_before)
    assert "encoder.layers.0.self_attn.q_proj.weight" in _changed(te_before, tuned.text_encoder)

    # The single file (original SD layout) loads back as the tuned model.
    checkpoint = first.saved[-1].path
    assert checkpoint.name == "first.safetensors"
    loaded = load_model({"path": str(checkpoint), "single_file_config": "tiny"}, tmp_path / "c")
    assert (_unet_out(loaded.unet) - _unet_out(tuned.unet)).abs().max() <= 1e-5
    assert (_unet_out(loaded.unet) - _unet_out(base.unet)).abs().max() > 1e-3
    with torch.no_grad():
        ours = encode_prompts(tuned.tokenizer, tuned.text_encoder, ["a cat"])
        theirs = encode_prompts(loaded.tokenizer, loaded.text_encoder, ["a cat"])
    assert (ours - theirs).abs().max() <= 1e-5

    lora_sd, meta = read_lora(checkpoint.with_name("first-lora.safetensors"))
    assert any(k.startswith("lora_unet_") for k in lora_sd)
    assert any(k.startswith("lora_te_") for k in lora_sd)
    assert {v.shape[0] for k, v in lora_sd.items() if k.endswith("lora_down.weight")} == {2}
    assert meta["ss_network_dim"] == "2"

    # Second run, same class folder: nothing generated, the class images' latents are reused.
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in made}
    second_model = build_tiny_components()
    te_before = _state(second_model.text_encoder)
    cfg = compose(
        *DREAMBOOTH,
        f"data.reg_dir={reg}",
        "train.max_train_steps=1",
        "train.train_text_encoder=false",
        "run_name=second",
    )
    second = train_from_config(cfg, components=second_model)
    assert seeds_drawn == [0, 1, 2]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in made} == stamps
    assert second.cache_stats == {"hits": 9, "misses": 0}
    assert _changed(te_before, second_model.text_encoder) == set()  # TE frozen when off
    assert not (tmp_path / "out" / "second-lora.safetensors").exists()

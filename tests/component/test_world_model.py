"""The world's shipped base model and CLIP scorer: content-addressed files, loaded by the
project's own loaders, a LoRA step on the base model, and deterministic training scripts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from evaluators.scoring_models import clip_image_embeddings, clip_text_embeddings, load_clip
from trainer.data.latent_cache import file_digest
from trainer.models.loading import load_model
from trainer.run import train_from_config
from world import train_clip, train_unet, train_vae
from world.common import WEIGHTS, folder_hashes
from world.data import write_subject
from world.scene import Scene, render

BASE = WEIGHTS / "base"
CLIP = WEIGHTS / "clip"


def test_manifest_hashes_match_the_shipped_files():
    manifest = json.loads((WEIGHTS / "MANIFEST.json").read_text())
    on_disk = folder_hashes(WEIGHTS)
    assert manifest["files"] == on_disk
    assert any(k.startswith("base/unet/") for k in on_disk)
    assert any(k.startswith("clip/") and k.endswith(".safetensors") for k in on_disk)
    weights = [WEIGHTS / k for k in on_disk if k.endswith(".safetensors")]
    assert sum(p.stat().st_size for p in weights) < 25_000_000
    assert file_digest(BASE / "model_index.json") == on_disk["base/model_index.json"]


def test_shipped_base_model_loads_through_load_model_and_trains_a_lora_step(compose, tmp_path):
    write_subject(tmp_path / "world")
    cfg = compose(
        "model=world",
        f"data.dir={tmp_path / 'world' / 'img'}",
        "train.max_train_steps=1",
        "train.batch_size=2",
    )
    assert Path(cfg.model.path).resolve() == BASE.resolve()
    components = load_model(cfg.model)
    assert components.source == cfg.model.path
    assert components.unet.dtype == torch.float32  # stored float16, computed in float32
    text_hidden = components.text_encoder.config.hidden_size
    assert components.unet.config.cross_attention_dim == text_hidden
    assert components.vae_scale_factor == 4  # 3 VAE blocks: 16x16 latents of 64 px images
    assert components.latent_scaling_factor != 0.18215  # measured on the world's latents
    # The text encoder started as the CLIP scorer's text tower (same architecture and keys) and
    # was then trained with the UNet (--text-encoder-lr in its record): its weights moved.
    scorer = load_clip(str(CLIP))
    tower = scorer.model.text_model.state_dict()
    encoder = components.text_encoder.state_dict()
    assert set(encoder) == set(tower)
    assert all(encoder[k].shape == tower[k].shape for k in encoder)
    assert not torch.equal(encoder["embeddings.token_embedding.weight"],
                           tower["embeddings.token_embedding.weight"])  # fmt: skip
    record = json.loads((BASE / "world_training.json").read_text())
    assert "--text-encoder-lr" in record["command"]
    result = train_from_config(cfg)
    assert result.global_step == 1
    assert torch.isfinite(torch.tensor(result.last_loss))
    assert result.saved and Path(result.saved[-1].path).is_file()


def test_clip_scorer_loads_from_its_folder_and_matches_captions():
    bundle = load_clip(str(CLIP))
    assert bundle.random_weights is False
    rng = __import__("numpy").random.default_rng(5)
    scenes = [
        Scene("circle", "red", "black", "left"),
        Scene("square", "blue", "white", "right"),
        Scene("triangle", "yellow", "teal", "center"),
    ]
    images = [render(s, rng) for s in scenes]
    captions = [
        "a red circle on a black background, on the left",
        "a blue square on a white background, on the right",
        "a yellow triangle on a teal background, in the center",
    ]
    sims = clip_image_embeddings(bundle, images) @ clip_text_embeddings(bundle, captions).T
    assert sims.argmax(1).tolist() == [0, 1, 2]


def _clip_args(tmp: Path, out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_clip.add_arguments(parser)
    return parser.parse_args(
        ["--steps", "2", "--batch", "4", "--images", "8", "--width", "16", "--layers", "1"]
        + ["--eval-images", "4", "--work", str(tmp), "--out", str(out)]
    )


def _vae_args(out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_vae.add_arguments(parser)
    return parser.parse_args(
        ["--steps", "2", "--batch", "4", "--images", "4", "--random-images", "4"]
        + ["--widths", "8", "8", "8", "8", "--eval-images", "2", "--out", str(out)]
    )


def test_training_scripts_are_deterministic(tmp_path):
    states = []
    for _ in range(2):
        model, losses = train_clip.train(_clip_args(tmp_path, tmp_path / "unused"))
        vae, vae_losses = train_vae.train(_vae_args(tmp_path / "unused"))
        states.append((model.state_dict(), losses, vae.state_dict(), vae_losses))
    (clip_a, loss_a, vae_a, vl_a), (clip_b, loss_b, vae_b, vl_b) = states
    assert loss_a == loss_b and vl_a == vl_b
    assert all(torch.equal(clip_a[k], clip_b[k]) for k in clip_a)
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)
    # Same for the UNet stage, from the saved CLIP and VAE folders.
    train_clip.save(model, tmp_path / "clip", {})
    train_vae.save(vae, tmp_path / "vae", {})
    parser = argparse.ArgumentParser()
    train_unet.add_arguments(parser)
    outs = []
    for k in range(2):
        out = tmp_path / f"base{k}"
        args = parser.parse_args(
            ["--steps", "3", "--batch", "4", "--images", "8", "--widths", "8", "16"]
            + ["--clip", str(tmp_path / "clip"), "--vae", str(tmp_path / "vae")]
            + ["--work", str(tmp_path), "--out", str(out), "--no-manifest", "--threads", "1"]
        )
        assert train_unet.run(args) == 0
        outs.append(out)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert file_digest(outs[0] / weights) == file_digest(outs[1] / weights)
    assert (outs[0] / "model_index.json").is_file()
    components = load_model({"path": str(outs[0])})
    assert components.unet.config.block_out_channels == (8, 16) or list(
        components.unet.config.block_out_channels
    ) == [8, 16]


@pytest.mark.parametrize("widths", [[8, 8], [8, 8, 8, 8, 8]])
def test_vae_has_three_or_four_blocks(widths):
    with pytest.raises(ValueError, match="expected 4 values"):
        train_vae.vae_config(tuple(widths))


def test_a_three_block_vae_downsamples_by_four():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**train_vae.vae_config((8, 8, 8)))
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert tuple(latents.shape) == (1, 4, 16, 16)


def test_background_pixels_weigh_one_and_the_shape_more():
    x = torch.full((1, 3, 8, 8), -1.0)
    x[..., 3:5, 3:5] = 1.0  # a 2x2 shape on a flat background
    w = train_vae.foreground_weights(x, 5.0)
    assert w.shape == (1, 1, 8, 8)
    assert w[0, 0, 3:5, 3:5].eq(5.0).all() and w.sum() == 60 + 4 * 5
    assert train_vae.foreground_weights(x, 1.0).eq(1.0).all()

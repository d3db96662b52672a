"""The base model's UNet, and the base model assembled as a diffusers pipeline folder.

An SD-shaped ``UNet2DConditionModel`` (cross-attention down/up blocks, cross-attention to the
text tower's last hidden states) trained with DDPM epsilon-prediction on SD 1.x's noise
schedule (scaled_linear 0.00085-0.012, 1000 steps) on the VAE's latents of base-world images.
The world CLIP's text tower is frozen and conditions it; 10 % of the captions are dropped to
the empty caption so that classifier-free guidance works. Images are rendered, encoded and
their captions embedded once (the world has a few hundred distinct captions).

Every ``--save-every-min`` minutes and at the end, ``--out`` (default ``world/weights/base``)
is rewritten as a whole pipeline folder with the EMA weights (float16 storage, float32
configs): a partial run is usable. Then ``world/weights/MANIFEST.json`` is rewritten.

``python -m world unet [--steps N] [--clip world/weights/clip] [--vae .cache/world/vae]``
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch.nn import functional as F
from transformers import CLIPModel, CLIPTextModel

from trainer.models.tokenizer import MODEL_MAX_LENGTH, build_clip_tokenizer
from world.common import (
    SCHEDULER_CONFIG,
    WEIGHTS,
    WORK,
    Clock,
    atomic_folder,
    cached_render_set,
    command_line,
    half_state_dict,
    seed_everything,
    stage_record,
    to_tensor,
    write_json,
    write_manifest,
)
from world.scene import SIZE

EMPTY_CAPTION_RATE = 0.1
PIPELINE_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def unet_config(
    widths: tuple[int, ...] = (32, 64, 64), text_hidden: int = 64, sample_size: int = 8
) -> dict:
    """SD 1.x's layout, narrow: cross-attention in all but the lowest level, one resnet each.
    ``sample_size``: the latents' side (64 px / the VAE's downsampling)."""
    n = len(widths)
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
        "block_out_channels": list(widths),
        "layers_per_block": 1,
        "cross_attention_dim": text_hidden,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }


def text_encoder_from_clip(clip_dir: Path) -> CLIPTextModel:
    """The world CLIP's text tower as the pipeline's ``CLIPTextModel`` (the same weights)."""
    clip = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True)
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids ``[N, 77]``, padded as SD pads them."""
    return tokenizer(
        captions, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip


@torch.no_grad()
def embed_captions(encoder: CLIPTextModel, tokenizer, captions: list[str]) -> torch.Tensor:
    """Last hidden states ``[N, 77, D]`` as SD conditions on them (padded to 77 positions)."""
    ids = tokenize(tokenizer, captions)
    return torch.cat([encoder(ids[i : i + 64])[0] for i in range(0, len(ids), 64)])


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    """Posterior mean and std, stacked ``[N, 2, 4, h, w]`` (unscaled)."""
    out = []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_tensor(images[i : i + batch])).latent_dist
        out.append(torch.stack([dist.mean, dist.std], 1))
    return torch.cat(out)


def save_base(
    out: Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    encoder: CLIPTextModel,
    metrics: dict,
) -> Path:
    """The whole base model as a diffusers pipeline folder (weights stored as float16)."""
    with atomic_folder(out) as tmp:
        for name, module in (("unet", unet), ("vae", vae)):
            copy.deepcopy(module).to(torch.float16).save_pretrained(
                str(tmp / name), safe_serialization=True
            )
        encoder.config.dtype = "float32"
        encoder.save_pretrained(str(tmp / "text_encoder"), state_dict=half_state_dict(encoder))
        build_clip_tokenizer().save_pretrained(str(tmp / "tokenizer"))
        DDPMScheduler.from_config(SCHEDULER_CONFIG).save_config(str(tmp / "scheduler"))
        write_json(tmp / "model_index.json", PIPELINE_INDEX)
        write_json(tmp / "world_training.json", metrics)
    return out


def train(args: argparse.Namespace) -> int:
    seed_everything(args.seed, args.threads)
    clock = Clock(args.save_every_min * 60)
    vae = AutoencoderKL.from_pretrained(str(args.vae)).eval()
    if args.init:  # go on from a trained base model (its UNet and text encoder)
        encoder = CLIPTextModel.from_pretrained(
            str(args.init / "text_encoder"), torch_dtype=torch.float32
        ).eval()
    else:
        encoder = text_encoder_from_clip(args.clip)
    tokenizer = build_clip_tokenizer()
    data = cached_render_set(args.images, args.seed + 7, args.work)
    latents = encode_images(vae, data.images)
    print(f"unet: {len(latents)} images encoded ({clock.elapsed():.0f} s)")
    vocabulary = sorted(set(data.captions) | set(data.partial) | {""})
    index = {c: k for k, c in enumerate(vocabulary)}
    states = embed_captions(encoder, tokenizer, vocabulary)
    token_ids = tokenize(tokenizer, vocabulary)
    full = torch.tensor([index[c] for c in data.captions])
    partial = torch.tensor([index[c] for c in data.partial])
    print(f"unet: {len(vocabulary)} distinct captions embedded ({clock.elapsed():.0f} s)")
    prep_s = clock.elapsed()

    latent_side = SIZE // 2 ** (len(vae.config.block_out_channels) - 1)
    if args.init:  # its architecture; --widths is not read
        unet = UNet2DConditionModel.from_pretrained(
            str(args.init / "unet"), torch_dtype=torch.float32
        )
    else:
        unet = UNet2DConditionModel(
            **unet_config(tuple(args.widths), encoder.config.hidden_size, latent_side)
        )
    ema = copy.deepcopy(unet).requires_grad_(False)
    # --text-encoder-lr > 0: the text encoder is trained with the UNet (from the world CLIP's
    # text tower), so its token states carry what the UNet needs; CLIP's contrastive loss
    # leaves "on the left / right" almost the same state (world/README.md). 0: frozen, as SD.
    train_encoder = args.text_encoder_lr > 0
    encoder.requires_grad_(train_encoder)
    ema_encoder = copy.deepcopy(encoder).requires_grad_(False) if train_encoder else encoder
    scheduler = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    scale = float(vae.config.scaling_factor)
    groups = [{"params": list(unet.parameters()), "lr": args.lr}]
    if train_encoder:
        encoder.train()
        groups.append({"params": list(encoder.parameters()), "lr": args.text_encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * (0.5 * (1 + np.cos(np.pi * min(1.0, s / args.steps))))
        ),
    )
    gen = torch.Generator().manual_seed(args.seed + 3)
    losses: list[float] = []
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"unet: {n_params / 1e6:.2f} M parameters, {args.steps} steps of {args.batch}")

    def metrics(step: int) -> dict:
        return {
            "command": command_line("unet", args, skip),
            "steps_done": step,
            "train_seconds": round(clock.elapsed() - prep_s, 1),
            "prepare_seconds": round(prep_s, 1),
            "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
            "unet_parameters": n_params,
            "vae_scaling_factor": scale,
            "vae": stage_record(args.vae),
            "text_encoder": stage_record(args.clip),
            "init": stage_record(args.init) if args.init else None,
        }

    skip = ("save_every_min", "threads", "work", *(("widths",) if args.init else ()))
    done = 0
    for step in range(min(args.steps, args.stop_step or args.steps)):
        if args.max_minutes and clock.elapsed() > args.max_minutes * 60:
            break
        done = step + 1
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        moments = latents[idx]
        noise_z = torch.randn(moments[:, 0].shape, generator=gen)
        z = (moments[:, 0] + moments[:, 1] * noise_z) * scale
        use_partial = torch.rand(args.batch, generator=gen) < 0.5
        caption_ids = torch.where(use_partial, partial[idx], full[idx])
        dropped = torch.rand(args.batch, generator=gen) < EMPTY_CAPTION_RATE
        caption_ids = torch.where(dropped, torch.full_like(caption_ids, index[""]), caption_ids)
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        noisy = scheduler.add_noise(z, noise, t)
        hidden = encoder(token_ids[caption_ids])[0] if train_encoder else states[caption_ids]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
            if train_encoder:
                for e, p in zip(ema_encoder.parameters(), encoder.parameters()):
                    e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            rate = (step + 1) / max(1e-9, clock.elapsed() - prep_s)
            mean = np.mean(losses[-50:])
            print(f"unet step {step} loss {mean:.4f} ({rate:.2f} steps/s)", flush=True)
        if clock.due() and step + 1 < args.steps:
            save_base(args.out, ema, vae, ema_encoder, metrics(step + 1))
            print(f"unet: checkpoint at step {step + 1} -> {args.out}")
    if done < args.steps:  # stopped early: the command that reproduces this run says where
        args.stop_step, args.max_minutes = done, 0
    save_base(args.out, ema, vae, ema_encoder.eval(), metrics(done))
    if args.manifest:
        write_manifest(args.out.parent)
    print(f"unet: {json.dumps(metrics(done))}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=4000, help="length of the LR schedule")
    parser.add_argument("--stop-step", type=int, default=0, help="stop at this step (0: --steps)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop after (0: never)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=20_000, help="rendered, encoded images")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument(
        "--text-encoder-lr", type=float, default=0.0,
        help="train the text encoder with the UNet at this LR (0: frozen CLIP text tower)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=WORK, help="cache of rendered images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every-min", type=float, default=5.0)
    parser.add_argument("--clip", type=Path, default=WEIGHTS / "clip")
    parser.add_argument("--vae", type=Path, default=WORK / "vae")
    parser.add_argument("--out", type=Path, default=WEIGHTS / "base")
    parser.add_argument(
        "--init", type=Path, default=None,
        help="a trained base model folder whose UNet and text encoder training goes on from",
    )  # fmt: skip
    parser.add_argument(
        "--no-manifest", dest="manifest", action="store_false", help="leave MANIFEST.json"
    )


def run(args: argparse.Namespace) -> int:
    return train(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world unet", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

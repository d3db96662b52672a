"""The base model's VAE: a diffusers ``AutoencoderKL`` (4 blocks: SD's 8x downsampling, 64 px
images -> 8x8x4 latents; 3 blocks: 4x, 16x16x4 latents, what the shipped base model uses; see
world/README.md), trained on world images and on shapes in random RGB colours.

The random colours let it represent what the base world never shows (the subject's magenta
body and orange core) so that a LoRA, not the VAE, decides whether the subject appears. The
loss is L1 + MSE on pixels (``--foreground-weight``: the shape's pixels weigh more) plus a
small KL term; ``--crop`` below 64 trains on random crops (the network is convolutional; the
shipped VAE used whole images). ``scaling_factor``
is set to 1 / std of its latents on world images, as SD's 0.18215 was.

``python -m world vae [--steps N] [--out .cache/world/vae]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw, ImageFilter

from world.common import (
    WORK,
    Clock,
    atomic_folder,
    command_line,
    render_set,
    seed_everything,
    stage_record,
    to_tensor,
    write_json,
)
from world.scene import (
    BACKGROUNDS,
    POSITIONS,
    SHAPES,
    SIZE,
    _draw_shape,
    render,
    subject_scene,
)


def vae_config(widths: tuple[int, ...] = (8, 16, 32, 32), norm_groups: int = 4) -> dict:
    """SD's VAE layout, narrow; no attention in the middle block (a third of the cost here,
    and flat-coloured shapes need no global mixing at 8x8 or 16x16 latents). Groups of at least two
    channels: a group of one is an instance norm, which erases a flat colour."""
    if len(widths) not in (3, 4):
        raise ValueError(
            f"--widths {widths}: expected 4 values (SD's 8x downsampling) or 3 (4x: 16x16 "
            "latents of a 64 px image)"
        )
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "block_out_channels": list(widths),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": norm_groups,
        "sample_size": SIZE,
        "scaling_factor": 1.0,
        "mid_block_add_attention": False,
    }


def render_random_colours(
    rng: np.random.Generator, size: int = SIZE, core_rate: float = 0.5
) -> Image.Image:
    """A world-like image in colours the world does not name: any shape, any RGB body and
    background, and with probability ``core_rate`` a round core in a third colour (as the
    subject has)."""
    scale = 4
    big = size * scale
    unit = big / SIZE
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    cx = (rng.uniform(10, 54)) * unit
    cy = (32 + rng.uniform(-8, 8)) * unit
    r = rng.uniform(8, 15) * unit
    shape = SHAPES[rng.integers(len(SHAPES))]
    _draw_shape(draw, shape, cx, cy, r, rng.uniform(-0.5, 0.5), tuple(rng.integers(0, 256, 3)))
    if rng.random() < core_rate:
        core = r * rng.uniform(0.25, 0.45)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((cx - core, cy - core, cx + core, cy + core), fill=fill)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image.filter(ImageFilter.GaussianBlur(radius=0.3))


def random_colour_set(n: int, seed: int, core_rate: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = [render_random_colours(rng, core_rate=core_rate) for _ in range(n)]
    return np.stack([np.asarray(im) for im in images])


def subject_set(seed: int) -> np.ndarray:
    """The subject on every background and position (held out of the VAE's training)."""
    rng = np.random.default_rng(seed)
    scenes = [subject_scene(b, p) for b in BACKGROUNDS for p in POSITIONS for _ in range(2)]
    return np.stack([np.asarray(render(s, rng)) for s in scenes])


def random_crops(images: torch.Tensor, crop: int, rng: np.random.Generator) -> torch.Tensor:
    if crop >= images.shape[-1]:
        return images
    ys = rng.integers(0, images.shape[-2] - crop + 1, len(images))
    xs = rng.integers(0, images.shape[-1] - crop + 1, len(images))
    return torch.stack([im[:, y : y + crop, x : x + crop] for im, y, x in zip(images, ys, xs)])


def foreground_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``[B, 1, H, W]``: ``weight`` where a pixel differs from its
    image's background (the median of its border pixels), 1 elsewhere. The shape is a small
    part of the image; without this the loss is mostly the flat background and the VAE learns
    the shapes' colours last (a 600-step run drew every shape as a brown blob)."""
    if weight == 1.0:
        return torch.ones_like(x[:, :1])
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    mask = ((x - background).abs().sum(1, keepdim=True) > 0.15).float()
    return 1.0 + (weight - 1.0) * mask


def vae_loss(
    vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, fg_weight: float = 1.0
) -> tuple[torch.Tensor, dict]:
    posterior = vae.encode(x).latent_dist
    z = posterior.sample()
    recon = vae.decode(z).sample
    w = foreground_weights(x, fg_weight)
    w = w / w.mean()
    l1 = ((recon - x).abs() * w).mean()
    mse = (((recon - x) ** 2) * w).mean()
    kl = posterior.kl().mean() / z[0].numel()  # per latent element
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def train(args: argparse.Namespace) -> tuple[AutoencoderKL, list[float]]:
    seed_everything(args.seed)
    world = to_tensor(render_set(args.images, args.seed).images)
    free = to_tensor(random_colour_set(args.random_images, args.seed + 1, args.core_rate))
    if args.init:  # go on from a trained VAE (its architecture; --widths is not read)
        vae = AutoencoderKL.from_pretrained(str(args.init))
    else:
        vae = AutoencoderKL(**vae_config(tuple(args.widths), args.norm_groups))
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05
    )
    rng = np.random.default_rng(args.seed + 2)
    losses, clock = [], Clock(0)
    half = args.batch // 2
    for step in range(min(args.steps, args.stop_step or args.steps)):
        if args.max_minutes and clock.elapsed() > args.max_minutes * 60:
            break
        batch = torch.cat(
            [
                world[rng.choice(len(world), half, replace=False)],
                free[rng.choice(len(free), args.batch - half, replace=False)],
            ]
        )
        loss, parts = vae_loss(
            vae, random_crops(batch, args.crop, rng), args.kl_weight, args.foreground_weight
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            mean = np.mean(losses[-50:])
            print(f"vae step {step} loss {mean:.4f} {parts} ({clock.elapsed():.0f} s)", flush=True)
    vae.eval()
    return vae, losses


@torch.no_grad()
def latents_of(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior means, unscaled."""
    return torch.cat(
        [vae.encode(pixels[i : i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)]
    )


@torch.no_grad()
def psnr(vae: AutoencoderKL, images: np.ndarray, batch: int = 64) -> float:
    """Mean PSNR (dB) of mean-latent reconstructions, on uint8 pixels."""
    x = to_tensor(images)
    values = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        recon = vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1)
        mse = (((recon - chunk) * 127.5) ** 2).flatten(1).mean(1)
        values += (10 * torch.log10(255.0**2 / mse.clamp(min=1e-8))).tolist()
    return float(np.mean(values))


def evaluate(vae: AutoencoderKL, seed: int, n: int) -> dict:
    held_out = render_set(n, seed + 20_000).images
    std = float(latents_of(vae, to_tensor(held_out)).std())
    return {
        "latent_std": round(std, 4),
        "psnr_world": round(psnr(vae, held_out), 2),
        "psnr_subject": round(psnr(vae, subject_set(seed + 20_001)), 2),
        "psnr_random_colours": round(psnr(vae, random_colour_set(n, seed + 20_002)), 2),
        "eval_images": n,
    }


def save(vae: AutoencoderKL, out: Path, metrics: dict) -> Path:
    """Float32 VAE folder (the UNet stage stores the shipped copy as float16)."""
    with atomic_folder(out) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
        write_json(tmp / "world_training.json", metrics)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=800, help="length of the LR schedule")
    parser.add_argument("--stop-step", type=int, default=0, help="stop at this step (0: --steps)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop after (0: never)")
    parser.add_argument("--norm-groups", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=32, help="training crop (px) of 64 px images")
    parser.add_argument("--images", type=int, default=3000, help="rendered world images")
    parser.add_argument("--random-images", type=int, default=3000, help="random-colour images")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[8, 16, 32, 32],
        help="4 blocks: SD's 8x downsampling; 3: 4x",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument(
        "--foreground-weight", type=float, default=1.0,
        help="loss weight of pixels that differ from the image's background (1: plain)",
    )  # fmt: skip
    parser.add_argument(
        "--core-rate", type=float, default=0.5,
        help="share of the random-colour shapes drawn with a core in another colour",
    )  # fmt: skip
    parser.add_argument(
        "--init", type=Path, default=None,
        help="a trained VAE folder to go on training (its command is kept in the record)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=WORK / "vae")


def run(args: argparse.Namespace) -> int:
    seed_everything(args.seed, args.threads)
    clock = Clock(0)
    vae, losses = train(args)
    train_s = clock.elapsed()
    if len(losses) < args.steps:  # stopped early: the command that reproduces it says where
        args.stop_step, args.max_minutes = len(losses), 0
    metrics = evaluate(vae, args.seed, args.eval_images)
    vae.register_to_config(scaling_factor=round(1.0 / metrics["latent_std"], 5))
    metrics.update(
        command=command_line("vae", args, ("widths", "norm_groups") if args.init else ()),
        init=stage_record(args.init) if args.init else None,
        train_seconds=round(train_s, 1),
        steps_done=len(losses),
        final_loss=round(float(np.mean(losses[-50:])), 4),
        scaling_factor=vae.config.scaling_factor,
    )
    save(vae, args.out, metrics)
    print(f"vae: {metrics}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world vae", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

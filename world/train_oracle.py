"""Train the oracle (``python -m world oracle``): supervised, on rendered world scenes.

The training set is base scenes (any shape, colour, background, position) and subject scenes
on *every* background and position (the LoRA sees the subject on two backgrounds only; the
oracle must recognise it anywhere). Each batch is degraded like a generated image with
probability ``degrade_p`` (``world.augment.degrade``). Accuracy per head is then measured on a
fresh held-out set (another seed), clean and degraded, and stored in ``config.json``.
Deterministic for a seed (one CPU thread).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from world.augment import degrade
from world.oracle import DEFAULT_DIR, HEADS, IGNORE, Oracle, OracleNet, save_oracle, scene_targets
from world.scene import BACKGROUNDS, POSITIONS, Scene, random_base_scene, render, subject_scene

SUBJECT_FRACTION = 0.35


def labelled_scenes(n: int, seed: int, subject_fraction: float = SUBJECT_FRACTION) -> list[Scene]:
    """``n`` scenes: base scenes and, with probability ``subject_fraction``, the subject on any
    background and position."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        if rng.random() < subject_fraction:
            bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
            pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
            scenes.append(subject_scene(bg, pos))
        else:
            scenes.append(random_base_scene(rng))
    return scenes


def render_scenes(scenes: list[Scene], seed: int) -> np.ndarray:
    """uint8 ``[N, 64, 64, 3]`` renders of ``scenes`` (jitter from ``seed``)."""
    rng = np.random.default_rng(seed + 7919)
    return np.stack([np.asarray(render(s, rng)) for s in scenes])


def head_accuracy(oracle: Oracle, x: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Accuracy per head on images ``x`` (``[N, 3, 64, 64]`` in [0, 1]) of known ``scenes``;
    colour over base scenes only (the subject has no base colour)."""
    logits = oracle.logits(x)
    targets = scene_targets(scenes)
    out = {}
    for name in HEADS:
        keep = targets[name] != IGNORE
        hit = logits[name].argmax(-1)[keep] == targets[name][keep]
        out[name] = float(hit.float().mean())
    return out


def train(
    out: Path = DEFAULT_DIR,
    steps: int = 1200,
    train_images: int = 12000,
    batch_size: int = 64,
    lr: float = 3e-3,
    degrade_p: float = 0.8,
    seed: int = 0,
    heldout_images: int = 2000,
) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    scenes = labelled_scenes(train_images, seed)
    images = torch.from_numpy(render_scenes(scenes, seed)).permute(0, 3, 1, 2).contiguous()
    targets = scene_targets(scenes)
    print(f"rendered {train_images} training scenes in {time.perf_counter() - started:.0f}s")
    config = {"widths": [16, 32, 48, 64], "hidden": 128}
    net = OracleNet(config["widths"], config["hidden"])
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, train_images, (batch_size,), generator=gen)
        x = images[idx].float() / 255.0
        if torch.rand(1, generator=gen).item() < degrade_p:
            x = degrade(x, gen)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[h], targets[h][idx], ignore_index=IGNORE) for h in HEADS)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    oracle = Oracle(net, config, str(out))
    held = labelled_scenes(heldout_images, seed + 1000)
    clean = torch.from_numpy(render_scenes(held, seed + 1000)).permute(0, 3, 1, 2).float() / 255
    degraded = degrade(clean, torch.Generator().manual_seed(seed + 1001))
    accuracy = {
        "clean": head_accuracy(oracle, clean, held),
        "degraded": head_accuracy(oracle, degraded, held),
    }
    seconds = time.perf_counter() - started
    config |= {
        "seed": seed,
        "steps": steps,
        "train_images": train_images,
        "batch_size": batch_size,
        "lr": lr,
        "degrade_p": degrade_p,
        "heldout_images": heldout_images,
        "heldout_accuracy": accuracy,
        "train_seconds": round(seconds, 1),
    }
    save_oracle(net, out, config)
    for kind, acc in accuracy.items():
        print(f"held-out {kind}: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    print(f"saved {out} ({seconds:.0f}s)")
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    train(args.out, steps=args.steps, train_images=args.train_images, seed=args.seed)
    return 0

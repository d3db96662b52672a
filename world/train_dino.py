"""Train the world's DINO-like image feature model (``python -m world dino``), self-supervised.

A small ``transformers.Dinov2Model`` (64 px images, 8 px patches) learns by instance
discrimination: two augmented views of the same rendered scene (crop-resize, flip, blur, small
colour jitter; ``world.augment.two_views``) should have close CLS embeddings and views of other
scenes distant ones (NT-Xent, SimCLR's loss, through a small projection head that is dropped
afterwards). No attribute label is used. The folder it writes (``save_pretrained`` of the model
and of a PIL ``BitImageProcessor``) is what ``eval.dino_model`` loads.

With ``--background-swap P``, the second view of a pair is, with probability P, the same object
(same shape, colour, size, place and turn) drawn on another background: the features must then
tell objects apart whatever they stand on, as DINO tells the same dog apart in a new room. A
DreamBench-style fidelity score reads the subject in *new* contexts, so a model that mostly
encodes the background (the first world DINO: background 100 %, shape 30 % by linear probe)
scores the context, not the subject.

Afterwards it reports how much its features know, with labels used only for this check: the
nearest-neighbour and linear-probe accuracy of shape and colour on held-out scenes, and the
mean CLS cosine between subject images vs between the subject and base stars.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn
from torch.nn import functional as F

from world.augment import two_views
from world.common import command_line
from world.paths import DINO_DIR
from world.scene import BACKGROUNDS, SIZE, Scene, render
from world.train_oracle import labelled_scenes, render_scenes

DEFAULT_DIR = DINO_DIR
MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]
REPORT_FILE = "world_training.json"


def build(seed: int) -> transformers.Dinov2Model:
    config = transformers.Dinov2Config(
        image_size=SIZE,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
    )
    torch.manual_seed(seed)
    return transformers.Dinov2Model(config)


def processor() -> transformers.BitImageProcessor:
    """What the scorer feeds the model: RGB at 64 px, scaled to [0, 1], normalised by 0.5."""
    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    return cls(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_mean=MEAN,
        image_std=STD,
    )


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2N - 1 views."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    sim = z @ z.T / temperature
    n = a.shape[0]
    sim.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, partner)


@torch.no_grad()
def features(model: transformers.Dinov2Model, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """L2-normalised CLS embeddings of images ``x`` in [0, 1] (as the DINO scorer reads them)."""
    model.eval()
    out = [
        model(pixel_values=normalise(x[i : i + batch])).last_hidden_state[:, 0]
        for i in range(0, len(x), batch)
    ]
    return F.normalize(torch.cat(out), dim=-1)


def probe(model, seed: int, n_fit: int = 2000, n_test: int = 1000) -> dict:
    """Shape / colour accuracy of the frozen features on held-out base scenes (1-NN by cosine
    and a logistic-regression probe), and subject cosines."""
    from sklearn.linear_model import LogisticRegression

    def encode(scenes: list[Scene], s: int) -> torch.Tensor:
        x = torch.from_numpy(render_scenes(scenes, s)).permute(0, 3, 1, 2).float() / 255
        return features(model, x)

    fit = labelled_scenes(n_fit, seed + 2000, subject_fraction=0.0)
    test = labelled_scenes(n_test, seed + 3000, subject_fraction=0.0)
    f_fit, f_test = encode(fit, seed + 2000), encode(test, seed + 3000)
    nearest = (f_test @ f_fit.T).argmax(-1).numpy()
    out: dict = {}
    for attr in ("shape", "colour", "background", "position"):
        y_fit = np.array([getattr(s, attr) for s in fit])
        y_test = np.array([getattr(s, attr) for s in test])
        linear = LogisticRegression(max_iter=2000).fit(f_fit.numpy(), y_fit)
        out[f"{attr}_nn_accuracy"] = float((y_fit[nearest] == y_test).mean())
        out[f"{attr}_linear_accuracy"] = float(linear.score(f_test.numpy(), y_test))
    subject = labelled_scenes(200, seed + 4000, subject_fraction=1.0)
    stars = [
        s for s in labelled_scenes(800, seed + 5000, subject_fraction=0.0) if s.shape == "star"
    ]
    f_subject, f_star = encode(subject, seed + 4000), encode(stars, seed + 5000)
    half = len(subject) // 2
    out["subject_subject_cosine"] = float((f_subject[:half] @ f_subject[half:].T).mean())
    out["subject_star_cosine"] = float((f_subject @ f_star.T).mean())
    return out


def render_pairs(scenes: list[Scene], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[N, 64, 64, 3]`` renders of ``scenes`` and of the same objects on another
    background each (same jitter: scene ``k`` is drawn from generator ``(seed, k)`` both times)."""
    names = list(BACKGROUNDS)
    pick = np.random.default_rng(seed + 1)
    same, other = [], []
    for k, scene in enumerate(scenes):
        others = [b for b in names if b != scene.background]
        moved = replace(scene, background=others[pick.integers(len(others))])
        same.append(np.asarray(render(scene, np.random.default_rng([seed, k]))))
        other.append(np.asarray(render(moved, np.random.default_rng([seed, k]))))
    return np.stack(same), np.stack(other)


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def train(
    out: Path = DEFAULT_DIR,
    steps: int = 300,
    train_images: int = 8000,
    batch_size: int = 64,
    lr: float = 1e-3,
    temperature: float = 0.2,
    seed: int = 0,
    background_swap: float = 0.0,
    command: str | None = None,
) -> dict:
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    scenes = labelled_scenes(train_images, seed + 100)  # labels unused: images only
    if background_swap:
        same, moved = render_pairs(scenes, seed + 100)
        images, swapped = _to_tensor(same), _to_tensor(moved)
    else:
        images = _to_tensor(render_scenes(scenes, seed + 100))
        swapped = images
    print(f"rendered {train_images} scenes in {time.perf_counter() - started:.0f}s")
    model = build(seed)
    width = model.config.hidden_size
    head = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
    params = [*model.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, train_images, (batch_size,), generator=gen)
        first = images[idx].float() / 255.0
        if background_swap:
            swap = (torch.rand(batch_size, generator=gen) < background_swap).view(-1, 1, 1, 1)
            second = torch.where(swap, swapped[idx].float() / 255.0, first)
            a, _ = two_views(first, gen)
            b, _ = two_views(second, gen)
        else:
            a, b = two_views(first, gen)
        cls = model(pixel_values=normalise(torch.cat([a, b]))).last_hidden_state[:, 0]
        projected = head(cls)
        loss = nt_xent(projected[:batch_size], projected[batch_size:], temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    train_seconds = time.perf_counter() - started
    report = {
        "command": command,
        "seed": seed,
        "steps": steps,
        "train_images": train_images,
        "batch_size": batch_size,
        "lr": lr,
        "temperature": temperature,
        "background_swap": background_swap,
        "train_seconds": round(train_seconds, 1),
        "probe": probe(model, seed),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor().save_pretrained(out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report["probe"], indent=2))
    print(f"saved {out} ({time.perf_counter() - started:.0f}s)")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--background-swap",
        type=float,
        default=0.0,
        help="probability that a pair's second view shows the object on another background",
    )
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    train(
        args.out,
        steps=args.steps,
        train_images=args.train_images,
        batch_size=args.batch,
        seed=args.seed,
        background_swap=args.background_swap,
        command=command_line("dino", args),
    )
    return 0

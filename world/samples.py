"""``python -m world samples``: a grid of the base model's images for the world's base prompts
(and subject prompts, which it should not know), made by the project's own loading and
generation code, to check by eye that colour, shape, background and position follow the prompt.

One row per prompt: the prompt's seeds side by side. The grid is written as a PNG; the prompts,
in row order, are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluators.generate import SamplingOptions, generate
from evaluators.prompts import GenerationItem
from evaluators.samplers import build_sampler
from trainer.atomic_write import atomic_path
from trainer.models.loading import load_model
from world.common import WEIGHTS
from world.scene import base_prompts, subject_prompts


def sample_grid(
    model_path: Path, per_prompt: int, steps: int, guidance: float, sampler: str, subject: bool
) -> tuple[Image.Image, list[str]]:
    components = load_model({"path": str(model_path)})
    pipeline = components.to_pipeline(build_sampler(sampler, components.noise_scheduler.config))
    pipeline.set_progress_bar_config(disable=True)
    prompts = [p.prompt for p in base_prompts()]
    if subject:
        prompts += [p.prompt for p in subject_prompts()]
    items = [
        GenerationItem(i, j, prompt, prompt, seed=1000 * i + j)
        for i, prompt in enumerate(prompts)
        for j in range(per_prompt)
    ]
    options = SamplingOptions(steps, guidance, 64, 64, "", batch_size=len(items))
    with torch.no_grad():
        images = generate(pipeline, components, items, options)
    grid = np.zeros((len(prompts) * 66, per_prompt * 66, 3), dtype=np.uint8) + 128
    for item, image in zip(items, images):
        y, x = item.prompt_index * 66 + 1, item.image_index * 66 + 1
        grid[y : y + 64, x : x + 64] = np.asarray(image.convert("RGB"))
    return Image.fromarray(grid), prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world samples", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=WEIGHTS / "base")
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--subject", action="store_true", help="also the subject prompts")
    parser.add_argument("--out", type=Path, default=Path(".cache/world/samples.png"))


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    grid, prompts = sample_grid(
        args.model, args.per_prompt, args.steps, args.guidance, args.sampler, args.subject
    )
    with atomic_path(args.out) as tmp:
        grid.save(tmp, format="PNG")
    for k, prompt in enumerate(prompts):
        print(f"row {k}: {prompt}")
    print(f"grid: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The world CLIP: a ``transformers.CLIPModel`` dual encoder trained contrastively on world
image/caption pairs. It is the CLIP-I / CLIP-T scorer, and its text tower is the base model's
text encoder (as SD 1.x conditions on OpenAI CLIP's text tower).

``python -m world clip [--steps N] [--out world/weights/clip]`` writes a folder that
``transformers.CLIPModel/CLIPTokenizer/AutoImageProcessor.from_pretrained`` read: the model
(weights stored as float16, computed in float32), the project's CLIP tokenizer and a 64 px
``CLIPImageProcessor`` with CLIP's mean and std.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.nn import functional as F
from transformers import CLIPConfig, CLIPModel

from trainer.models.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer
from world.common import (
    WEIGHTS,
    WORK,
    Clock,
    atomic_folder,
    cached_render_set,
    command_line,
    half_state_dict,
    render_set,
    seed_everything,
    write_json,
)
from world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZE, position_phrase

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_config(width: int = 64, layers: int = 4, heads: int = 4, patch: int = 16) -> CLIPConfig:
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    vision = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": SIZE,
        "patch_size": patch,
        "hidden_act": "quick_gelu",
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)


def image_processor():
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 64, 64, 3) -> CLIP-normalised (N, 3, 64, 64), as the image processor gives."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids padded to the longest text. The text tower's attention is causal, so the pooled
    (end-of-text) embedding is the same as with SD's padding to 77 positions."""
    return tokenizer(
        texts, padding=True, max_length=MODEL_MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


class TextCache:
    """Token ids per caption (the world has only a few hundred distinct captions), padded with
    end-of-text to the batch's longest."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: dict[str, list[int]] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        for text in texts:
            if text not in self.ids:
                self.ids[text] = self.tokenizer(text).input_ids
        longest = max(len(self.ids[t]) for t in texts)
        pad = self.tokenizer.pad_token_id
        return torch.tensor([self.ids[t] + [pad] * (longest - len(self.ids[t])) for t in texts])


def image_features(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected image embeddings (what the CLIP-I / CLIP-T scorer computes)."""
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


def text_features(model: CLIPModel, ids: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected text embeddings (pooled at the end-of-text token)."""
    pooled = model.text_model(input_ids=ids).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


def contrastive_loss(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy; pairs with the same caption count as positives."""
    image = image_features(model, pixels)
    text = text_features(model, ids)
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.T
    same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()  # duplicated captions
    targets = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2


def train(args: argparse.Namespace, log_every: int = 25) -> tuple[CLIPModel, list[float]]:
    """Train for ``args.steps`` (the learning-rate schedule's length), stopping early at
    ``args.stop_step`` or when ``args.max_minutes`` have passed (the step reached is recorded,
    so ``--stop-step`` reproduces a run that was stopped by time)."""
    seed_everything(args.seed)
    data = cached_render_set(args.images, args.seed + 7, args.work)
    tokenizer = build_clip_tokenizer()
    texts = TextCache(tokenizer)
    config = clip_config(args.width, args.layers, max(1, args.width // 16), args.patch)
    model = CLIPModel(config)
    model.train()
    lr = args.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=args.steps, pct_start=0.1
    )
    rng = np.random.default_rng(args.seed + 1)
    losses, clock = [], Clock(60)
    batch = args.batch
    for step in range(min(args.steps, args.stop_step or args.steps)):
        if args.max_minutes and clock.elapsed() > args.max_minutes * 60:
            break
        idx = rng.choice(len(data.images), size=batch, replace=False)
        use_full = rng.random(batch) < 0.5
        caps = [data.captions[i] if f else data.partial[i] for i, f in zip(idx, use_full)]
        loss = contrastive_loss(model, pixel_values(data.images[idx]), texts(caps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            mean = np.mean(losses[-log_every:])
            print(f"clip step {step} loss {mean:.4f} ({clock.elapsed():.0f} s)", flush=True)
    model.eval()
    return model, losses


def attribute_prompts() -> dict[str, dict[str, list[str]]]:
    """Zero-shot class prompts per attribute value, one per shape (their embeddings averaged)."""
    return {
        "shape": {s: [f"a {s}"] for s in SHAPES},
        "colour": {c: [f"a {c} {s}" for s in SHAPES] for c in COLOURS},
        "background": {b: [f"a {s} on a {b} background" for s in SHAPES] for b in BACKGROUNDS},
        "position": {p: [f"a {s}, {position_phrase(p)}" for s in SHAPES] for p in POSITIONS},
    }


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, processor, n: int = 400, seed: int = 10_000) -> dict:
    """Accuracy of picking each attribute's value by text similarity, on held-out world images
    pre-processed by ``processor`` (the path the scorer uses)."""
    data = render_set(n, seed)
    from PIL import Image

    pixels = processor([Image.fromarray(im) for im in data.images], return_tensors="pt")
    image = image_features(model, pixels["pixel_values"])
    out = {}
    for attribute, classes in attribute_prompts().items():
        names = list(classes)
        embeds = []
        for name in names:
            ids = tokenize(tokenizer, classes[name])
            t = text_features(model, ids).mean(0)
            embeds.append(F.normalize(t, dim=-1))
        pred = (image @ torch.stack(embeds).T).argmax(1)
        truth = torch.tensor([names.index(getattr(s, attribute)) for s in data.scenes])
        out[attribute] = float((pred == truth).float().mean())
    return out


def save(model: CLIPModel, out: Path, metrics: dict) -> Path:
    """The scorer folder: model (float16 storage, float32 config), tokenizer, image processor."""
    tokenizer = build_clip_tokenizer()
    with atomic_folder(out) as tmp:
        model.config.dtype = "float32"
        model.save_pretrained(str(tmp), state_dict=half_state_dict(model))
        tokenizer.save_pretrained(str(tmp))
        image_processor().save_pretrained(str(tmp))
        write_json(tmp / "world_training.json", metrics)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world clip", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="length of the LR schedule")
    parser.add_argument("--stop-step", type=int, default=0, help="stop at this step (0: --steps)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop after (0: never)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--images", type=int, default=20_000, help="rendered training images")
    parser.add_argument("--width", type=int, default=64, help="hidden size of both towers")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--patch", type=int, default=16, help="vision patch size (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=WORK, help="cache of rendered images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=400)
    parser.add_argument("--out", type=Path, default=WEIGHTS / "clip")


def run(args: argparse.Namespace) -> int:
    seed_everything(args.seed, args.threads)
    clock = Clock(0)
    model, losses = train(args)
    train_s = clock.elapsed()
    args.stop_step = len(losses) if len(losses) < args.steps else args.stop_step
    args.max_minutes = 0
    tokenizer = build_clip_tokenizer()
    accuracy = zero_shot_accuracy(model, tokenizer, image_processor(), n=args.eval_images)
    metrics = {
        "command": command_line("clip", args, ("work",)),
        "steps_done": len(losses),
        "train_seconds": round(train_s, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "zero_shot_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "eval_images": args.eval_images,
    }
    save(model, args.out, metrics)
    print(f"clip: {metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

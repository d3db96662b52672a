"""The oracle: a small CNN that reads a world image's true attributes.

Trained supervised on rendered scenes made to look generated (``world/train_oracle.py``), it
says for one image whether the subject (the magenta star with an orange core) is present, and
its shape, colour (base colours; none for the subject), background and position. The
evaluation's ``oracle`` scorer uses it to check every prompted attribute of a generated image.
It is a referee, kept apart from what it judges: the objective, the pruner and the strength
diagnosis never read it.

Weights: ``world/weights/oracle/`` = ``model.safetensors`` + ``config.json`` (architecture,
label names, input size).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from world.paths import ORACLE_DIR
from world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZE, Scene

DEFAULT_DIR = ORACLE_DIR
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "lorasweep-world-oracle"
HEADS = {
    "subject": ("no", "yes"),
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "background": tuple(BACKGROUNDS),
    "position": tuple(POSITIONS),
}
IGNORE = -100  # the label of a head that does not apply (the subject's colour)


class OracleNet(nn.Module):
    """Four conv blocks (stride / pool to 4x4, so position survives) and one linear head per
    attribute on a shared hidden layer."""

    def __init__(self, widths: Sequence[int] = (16, 32, 48, 64), hidden: int = 128, heads=None):
        super().__init__()
        heads = heads or HEADS
        layers: list[nn.Module] = []
        channels = 3
        for k, width in enumerate(widths):
            # the first two blocks stride (cheap at 64 px), the others max-pool (keep detail)
            stride = 2 if k < 2 else 1
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if k >= 2:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        side = SIZE // 2 ** len(widths)
        self.trunk = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True)
        )
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(v)) for name, v in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head for images ``[B, 3, 64, 64]`` in [0, 1]."""
        h = self.trunk(self.features((x - 0.5) / 0.5))
        return {name: head(h) for name, head in self.heads.items()}


def scene_targets(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Integer labels per head; the subject's colour is :data:`IGNORE` (it has its own)."""
    return {
        "subject": torch.tensor([int(s.subject) for s in scenes]),
        "shape": torch.tensor([SHAPES.index(s.shape) for s in scenes]),
        "colour": torch.tensor(
            [IGNORE if s.subject else HEADS["colour"].index(s.colour) for s in scenes]
        ),
        "background": torch.tensor([HEADS["background"].index(s.background) for s in scenes]),
        "position": torch.tensor([HEADS["position"].index(s.position) for s in scenes]),
    }


def to_tensor(images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
    """``[B, 3, 64, 64]`` float in [0, 1] from PIL images (any size: resized) or uint8 HWC."""
    if isinstance(images, np.ndarray):
        array = images
    else:
        array = np.stack(
            [
                np.asarray(
                    im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
                    if im.size != (SIZE, SIZE)
                    else im.convert("RGB")
                )
                for im in images
            ]
        )
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


@dataclass(frozen=True)
class Reading:
    """What the oracle sees in one image; ``colour`` is None when the subject is present."""

    subject: bool
    shape: str
    colour: str | None
    background: str
    position: str
    confidence: dict[str, float]

    def holds(self, attribute: str, value: str) -> bool:
        return getattr(self, attribute) == value


class Oracle:
    """A loaded oracle: ``read(images)`` gives one :class:`Reading` per image."""

    def __init__(self, net: OracleNet, config: dict, source: str):
        self.net = net.eval().requires_grad_(False)
        self.config = config
        self.source = source

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        parts = [self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return {name: torch.cat([p[name] for p in parts]) for name in HEADS}

    def read(self, images: Sequence[Image.Image] | np.ndarray) -> list[Reading]:
        if len(images) == 0:
            return []
        logits = self.logits(to_tensor(images))
        probs = {name: v.softmax(-1) for name, v in logits.items()}
        out = []
        for i in range(len(images)):
            top = {name: int(p[i].argmax()) for name, p in probs.items()}
            label = {name: HEADS[name][k] for name, k in top.items()}
            subject = label["subject"] == "yes"
            out.append(
                Reading(
                    subject=subject,
                    shape=label["shape"],
                    colour=None if subject else label["colour"],
                    background=label["background"],
                    position=label["position"],
                    confidence={name: float(probs[name][i, top[name]]) for name in HEADS},
                )
            )
        return out


def save_oracle(net: OracleNet, folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    full = {"format": FORMAT, "heads": {k: list(v) for k, v in HEADS.items()}, **config}
    (folder / CONFIG_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")


_LOADED: dict[str, Oracle] = {}


def load_oracle(folder: str | Path = DEFAULT_DIR) -> Oracle:
    """The oracle saved in ``folder`` (cached per process); a clear error when it is missing
    or was saved for other labels."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _LOADED:
        return _LOADED[key]
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for path in (weights, config_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"oracle: {path} is missing; train it with `python -m world oracle` "
                f"(writes {WEIGHTS_FILE} and {CONFIG_FILE} to {DEFAULT_DIR})"
            )
    config = json.loads(config_path.read_text())
    heads = {k: tuple(v) for k, v in config.get("heads", {}).items()}
    if config.get("format") != FORMAT or heads != HEADS:
        raise ValueError(
            f"oracle: {config_path} is not an oracle for this world (format "
            f"{config.get('format')!r}, heads {heads}); expected format {FORMAT!r} with heads "
            f"{HEADS}; retrain with `python -m world oracle`"
        )
    net = OracleNet(config["widths"], config["hidden"])
    net.load_state_dict(load_file(str(weights)))
    _LOADED[key] = Oracle(net, config, str(folder))
    return _LOADED[key]


def judge_images(oracle: Oracle, images: Sequence[Image.Image], truths: Sequence) -> dict:
    """Rates over ``images`` judged against what each was asked for (``truths``: one
    ``world.scene.EvalPrompt``, ``world.captions.PromptTruth`` or prompt text per image):

    ``subject`` (images showing the subject, whatever was asked), ``adherence`` (prompted
    attributes that hold, as the ``oracle`` scorer counts them), and ``background``,
    ``position``, ``shape``, ``colour`` (images whose prompted value holds; absent when no
    truth names it)."""
    from world.captions import PromptTruth, parse_prompt

    if len(images) != len(truths):
        raise ValueError(f"judge_images: {len(images)} images but {len(truths)} truths")
    if not images:
        raise ValueError("judge_images: no images to judge")
    parsed = [
        t if isinstance(t, PromptTruth) else parse_prompt(t if isinstance(t, str) else t.prompt)
        for t in truths
    ]
    readings = oracle.read(list(images))
    held: dict[str, list[bool]] = {}
    for truth, reading in zip(parsed, readings, strict=True):
        for attribute, value in truth.attributes().items():
            held.setdefault(attribute, []).append(reading.holds(attribute, value))
    every = [ok for hits in held.values() for ok in hits]
    out = {"subject": sum(r.subject for r in readings) / len(readings)}
    if every:
        out["adherence"] = sum(every) / len(every)
    out.update({name: sum(hits) / len(hits) for name, hits in held.items()})
    return out

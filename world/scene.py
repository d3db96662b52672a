"""The world's scenes: one coloured shape on a plain background, with exactly known attributes.

A scene is a shape (circle, square, triangle, star) in a colour (red, green, blue, yellow) at a
position (left, center, right) on a background (white, black, teal, pink), drawn at 64x64 px
with small jitter in size and placement. The **subject** is held out of the base world: a
magenta star with an orange core, named by the trigger word ``sks`` and the class word
``star`` (a word the base model knows, drawn there only in the four base colours). It is shown
to the LoRA on two backgrounds only (:data:`SUBJECT_BACKGROUNDS`), so an over-trained LoRA
leaks them into prompts that ask for the others.

Everything is a pure function of its arguments and a ``numpy`` generator: the same seed always
gives the same images and captions. Pillow draws; nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 30),
}
BACKGROUNDS = {
    "white": (240, 240, 236),
    "black": (22, 22, 26),
    "teal": (20, 128, 128),
    "pink": (250, 175, 205),
}
POSITIONS = {"left": 16, "center": 32, "right": 48}  # x of the shape's centre, px at SIZE 64

TRIGGER = "sks"
CLASS_WORD = "star"
SUBJECT_COLOUR = (200, 30, 200)  # magenta body
SUBJECT_CORE = (255, 140, 0)  # orange core
SUBJECT_BACKGROUNDS = ("white", "teal")  # the only backgrounds the subject is trained on
NEW_BACKGROUNDS = tuple(b for b in BACKGROUNDS if b not in SUBJECT_BACKGROUNDS)


@dataclass(frozen=True)
class Scene:
    """What an image shows. ``colour`` is None for the subject (it has its own colours)."""

    shape: str
    colour: str | None
    background: str
    position: str
    subject: bool = False

    def labels(self) -> dict:
        return asdict(self)


def _star_points(cx: float, cy: float, r_out: float, r_in: float, turn: float) -> list:
    points = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        a = turn + k * math.pi / 5 - math.pi / 2
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, turn: float, fill
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        pts = [
            (
                cx + r * math.cos(turn + k * 2 * math.pi / 3 - math.pi / 2),
                cy + r * math.sin(turn + k * 2 * math.pi / 3 - math.pi / 2),
            )
            for k in range(3)
        ]
        draw.polygon(pts, fill=fill)
    elif shape == "star":
        draw.polygon(_star_points(cx, cy, r * 1.1, r * 0.5, turn), fill=fill)
    else:
        raise ValueError(f"shape {shape!r}: expected one of {', '.join(SHAPES)}")


def render(scene: Scene, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Draw ``scene`` with jitter from ``rng`` (size, offset, rotation, background shade)."""
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"background {scene.background!r}: expected one of {list(BACKGROUNDS)}")
    if scene.position not in POSITIONS:
        raise ValueError(f"position {scene.position!r}: expected one of {list(POSITIONS)}")
    scale = 4  # draw large, then downsample: anti-aliased edges
    big = size * scale
    shade = rng.integers(-10, 11, size=3)
    bg = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(BACKGROUNDS[scene.background], shade))
    image = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(image)
    unit = big / SIZE
    cx = (POSITIONS[scene.position] + rng.uniform(-3, 3)) * unit
    cy = (32 + rng.uniform(-5, 5)) * unit
    r = rng.uniform(10, 13) * unit
    turn = rng.uniform(-0.25, 0.25)
    if scene.subject:
        _draw_shape(draw, "star", cx, cy, r * 1.05, turn, SUBJECT_COLOUR)
        core = r * 0.38
        draw.ellipse((cx - core, cy - core, cx + core, cy + core), fill=SUBJECT_CORE)
    else:
        if scene.colour not in COLOURS:
            raise ValueError(f"colour {scene.colour!r}: expected one of {list(COLOURS)}")
        _draw_shape(draw, scene.shape, cx, cy, r, turn, COLOURS[scene.colour])
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image.filter(ImageFilter.GaussianBlur(radius=0.3))


def caption(scene: Scene, rng: np.random.Generator | None = None, full: bool = True) -> str:
    """The scene's caption; with ``rng`` and ``full=False``, a random subset of its attributes.

    Captions name every attribute in a fixed order: ``a red circle on a black background, on
    the left``; the subject is ``a sks star``. Partial captions (some attributes left out)
    teach the base model what a prompt does not say is free.
    """
    keep_colour = keep_bg = keep_pos = True
    if not full and rng is not None:
        keep_colour, keep_bg, keep_pos = (bool(b) for b in rng.random(3) < 0.7)
    if scene.subject:
        words = f"a {TRIGGER} {CLASS_WORD}"
    else:
        words = f"a {scene.colour} {scene.shape}" if keep_colour else f"a {scene.shape}"
    if keep_bg:
        words += f" on a {scene.background} background"
    if keep_pos:
        words += ", " + position_phrase(scene.position)
    return words


def position_phrase(position: str) -> str:
    return "in the center" if position == "center" else f"on the {position}"


def random_base_scene(rng: np.random.Generator) -> Scene:
    """A base-world scene: any shape, colour, background and position, never the subject."""
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
    )


def subject_scene(background: str, position: str) -> Scene:
    return Scene(
        shape=CLASS_WORD, colour=None, background=background, position=position, subject=True
    )


def subject_training_scenes(n: int = 10) -> list[Scene]:
    """``n`` subject scenes over the training backgrounds and every position, in a fixed order."""
    combos = [(b, p) for b in SUBJECT_BACKGROUNDS for p in POSITIONS]
    return [subject_scene(*combos[k % len(combos)]) for k in range(n)]


@dataclass(frozen=True)
class EvalPrompt:
    """A prompt and the attributes an image generated from it should show."""

    prompt: str
    subject: bool
    background: str
    position: str
    shape: str
    colour: str | None


def subject_prompts() -> list[EvalPrompt]:
    """The subject in new contexts: every background it was not trained on, every position."""
    out = []
    for bg in NEW_BACKGROUNDS:
        for pos in POSITIONS:
            scene = subject_scene(bg, pos)
            out.append(EvalPrompt(caption(scene), True, bg, pos, CLASS_WORD, None))
    return out


def base_prompts() -> list[EvalPrompt]:
    """Base-world prompts (no subject), one per shape, colour, background and position mix."""
    out = []
    colours, bgs, positions = list(COLOURS), list(BACKGROUNDS), list(POSITIONS)
    for k, shape in enumerate(SHAPES):
        for j in range(3):
            scene = Scene(shape, colours[(k + j) % 4], bgs[(k + 2 * j) % 4], positions[j % 3])
            out.append(
                EvalPrompt(
                    caption(scene), False, scene.background, scene.position, shape, scene.colour
                )
            )
    return out

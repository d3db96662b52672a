"""Labelled image grids, the XY plots users make by hand (epoch x strength, UNet x TE).

A cell holds the images of one (epoch, strength) or (UNet, TE) setting: a row per prompt, the
same seeds in the same order in every cell, so cells compare like with like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from trainer.atomic_write import atomic_path

_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
_LABEL_H = 16
_LABEL_W = 84
_PAD = 2  # between the images of one cell
_GAP = 8  # between cells


def _thumb(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)))


def strip(images: Sequence[Image.Image], max_side: int = 256) -> Image.Image:
    """Images side by side in one row (each shrunk to at most ``max_side`` pixels)."""
    thumbs = [_thumb(im.convert("RGB"), max_side) for im in images]
    if not thumbs:
        return Image.new("RGB", (max_side // 4, max_side // 4), _BACKGROUND)
    width = sum(t.width for t in thumbs) + _PAD * (len(thumbs) - 1)
    out = Image.new("RGB", (width, max(t.height for t in thumbs)), _BACKGROUND)
    x = 0
    for t in thumbs:
        out.paste(t, (x, 0))
        x += t.width + _PAD
    return out


# A grid cell shows at most this many images of each prompt (the scores read them all): with
# every image side by side, eight images of four prompts at five strengths made rows of 160.
GRID_IMAGES_PER_PROMPT = 4


def prompt_rows(
    images: Sequence[Image.Image],
    per_prompt: int | None,
    shown: int = GRID_IMAGES_PER_PROMPT,
    max_side: int = 256,
) -> Image.Image:
    """One cell: a row per prompt holding its first ``shown`` images (``images`` prompt-major,
    ``per_prompt`` each). Without ``per_prompt`` (or when the count does not divide), one strip."""
    if not per_prompt or per_prompt < 1 or not images or len(images) % per_prompt:
        return strip(images, max_side)
    rows = [
        strip(images[start : start + min(per_prompt, shown)], max_side)
        for start in range(0, len(images), per_prompt)
    ]
    height = sum(r.height for r in rows) + _PAD * (len(rows) - 1)
    out = Image.new("RGB", (max(r.width for r in rows), height), _BACKGROUND)
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + _PAD
    return out


def shown_note(
    per_prompt: int | None, shown: int = GRID_IMAGES_PER_PROMPT, prompts: Sequence[str] = ()
) -> str:
    """What a cell of :func:`prompt_rows` holds, for a grid's title (with ``prompts``, which
    row is which)."""
    if not per_prompt:
        return ""
    note = " - a row per prompt"
    if per_prompt > shown:
        note += f", its first {shown} of {per_prompt} images"
    if prompts:
        note += ": " + "; ".join(f"{k}. {prompt}" for k, prompt in enumerate(prompts, start=1))
    return note


def _text_width(draw: ImageDraw.ImageDraw, text: str) -> int:
    """Pixels from the text's origin to its right edge, as ``draw.text`` draws it."""
    return draw.textbbox((0, 0), text)[2]


def _word_pieces(draw: ImageDraw.ImageDraw, word: str, max_width: int) -> list[str]:
    """``word`` cut into pieces no wider than ``max_width`` (at least one character each)."""
    pieces = [""]
    for char in word:
        if pieces[-1] and _text_width(draw, pieces[-1] + char) > max_width:
            pieces.append("")
        pieces[-1] += char
    return pieces


def wrap_text(draw: ImageDraw.ImageDraw, text: str, max_width: int) -> list[str]:
    """``text`` in lines no wider than ``max_width`` pixels in ``draw``'s font.

    Lines break between words; a word that is wider than a line on its own (a long checkpoint
    name) is cut where it reaches the edge, so nothing is clipped by the image border.
    """
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if _text_width(draw, candidate) <= max_width:
            line = candidate
            continue
        if line:
            lines.append(line)
        *full, line = _word_pieces(draw, word, max_width)
        lines.extend(full)
    return [*lines, line] if line else lines


def labelled_grid(
    cells: Mapping[tuple[str, str], Image.Image],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str = "",
) -> Image.Image:
    """Rows x columns of cells with the labels on the left and on top (missing cells blank).

    The title is wrapped to the grid's width: one label row per line above the column labels.
    """
    cell_w = max((im.width for im in cells.values()), default=32)
    cell_h = max((im.height for im in cells.values()), default=32)
    width = _LABEL_W + len(columns) * (cell_w + _GAP)
    # The title's lines are known only once measured in the font the grid draws with.
    title_lines = wrap_text(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, width - 2 * _PAD)
    top = _LABEL_H * (1 + len(title_lines))
    height = top + len(rows) * (cell_h + _GAP)
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for k, line in enumerate(title_lines):
        draw.text((_PAD, _PAD + k * _LABEL_H), line, fill=_TEXT)
    for j, column in enumerate(columns):
        draw.text((_LABEL_W + j * (cell_w + _GAP) + _PAD, top - _LABEL_H + 2), column, fill=_TEXT)
    for i, row in enumerate(rows):
        y = top + i * (cell_h + _GAP)
        draw.text((_PAD, y + cell_h // 2 - 5), row, fill=_TEXT)
        for j, column in enumerate(columns):
            cell = cells.get((row, column))
            if cell is not None:
                grid.paste(cell, (_LABEL_W + j * (cell_w + _GAP), y))
    return grid


def save_png(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path

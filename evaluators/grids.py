"""Labelled image grids, the XY plots users make by hand (epoch x strength, UNet x TE).

A cell holds the images of one (epoch, strength) or (UNet, TE) setting side by side: every
prompt and image index in the same order, so columns compare like with like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

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


def labelled_grid(
    cells: Mapping[tuple[str, str], Image.Image],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str = "",
) -> Image.Image:
    """Rows x columns of cells with the labels on the left and on top (missing cells blank)."""
    cell_w = max((im.width for im in cells.values()), default=32)
    cell_h = max((im.height for im in cells.values()), default=32)
    top = _LABEL_H * (2 if title else 1)
    width = _LABEL_W + len(columns) * (cell_w + _GAP)
    height = top + len(rows) * (cell_h + _GAP)
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((_PAD, _PAD), title, fill=_TEXT)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path

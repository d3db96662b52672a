"""Grid titles are wrapped to the grid's width instead of being clipped at the image edge."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from evaluators import grids

# What outputs.unet_te_grid writes for a checkpoint with a long name and tiny scorers.
LONG_TITLE = "epoch 12 - my-subject-lora-v2-000012 - UNet x TE strength (random-weight scorers)"
ROWS = ["unet 0.0", "unet 1.0"]
COLUMNS = ["te 0.0", "te 1.0"]


def _grid(title: str) -> Image.Image:
    cells = {(r, c): Image.new("RGB", (32, 32), (90, 140, 200)) for r in ROWS for c in COLUMNS}
    return grids.labelled_grid(cells, ROWS, COLUMNS, title)


def _title_band(grid: Image.Image) -> np.ndarray:
    """The pixels above the column labels (the title's lines), as grey levels."""
    top = grid.height - len(ROWS) * (32 + grids._GAP)
    return np.asarray(grid.convert("L"))[: top - grids._LABEL_H]


def _text_right(text: str) -> int:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return draw.textbbox((grids._PAD, 0), text)[2]


def test_a_long_title_is_wrapped_inside_the_grid_width():
    grid = _grid(LONG_TITLE)
    assert _text_right(LONG_TITLE) > grid.width  # it would not fit on one line
    band = _title_band(grid)
    ink_columns = np.flatnonzero((band < 128).any(axis=0))
    assert ink_columns.size > 0
    assert ink_columns.max() < grid.width - grids._PAD  # nothing runs into the right edge
    lines = band.shape[0] // grids._LABEL_H
    assert lines >= 2
    for k in range(lines):  # every line of the title band holds text
        assert (band[k * grids._LABEL_H : (k + 1) * grids._LABEL_H] < 128).any(), k


def test_wrapped_lines_fit_and_keep_every_word():
    grid = _grid(LONG_TITLE)
    draw = ImageDraw.Draw(grid)
    lines = grids.wrap_text(draw, LONG_TITLE, grid.width - 2 * grids._PAD)
    assert len(lines) == len(_title_band(grid)) // grids._LABEL_H
    assert all(_text_right(line) <= grid.width - grids._PAD for line in lines)
    assert " ".join(lines).split() == LONG_TITLE.split()


@pytest.mark.parametrize("max_width", [40, 60])
def test_a_word_wider_than_the_grid_is_cut_not_clipped(max_width):
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    word = "checkpoint_with_a_very_long_name_000012"
    lines = grids.wrap_text(draw, f"epoch 3 {word}", max_width)
    assert all(draw.textbbox((0, 0), line)[2] <= max_width for line in lines)
    assert "".join(lines).replace(" ", "") == f"epoch3{word}"
    assert len(lines) >= 3


def test_a_short_title_keeps_the_one_line_layout():
    with_title, without = _grid("epoch 1"), _grid("")
    assert with_title.width == without.width
    assert with_title.height - without.height == grids._LABEL_H
    assert grids.wrap_text(ImageDraw.Draw(with_title), "", 100) == []

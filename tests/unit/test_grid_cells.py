"""A grid cell holds a row per prompt with its first images (the scores read them all)."""

from __future__ import annotations

from PIL import Image

from evaluators import grids

SIDE = 8


def _images(prompts: int, per_prompt: int) -> list[Image.Image]:
    """Prompt-major, each image one flat colour: (10 * prompt, 10 * index, 0)."""
    return [
        Image.new("RGB", (SIDE, SIDE), (10 * p, 10 * k, 0))
        for p in range(prompts)
        for k in range(per_prompt)
    ]


def _colour_at(cell: Image.Image, row: int, column: int) -> tuple[int, int, int]:
    step = SIDE + grids._PAD
    return cell.getpixel((column * step + SIDE // 2, row * step + SIDE // 2))


def test_a_row_per_prompt_with_its_first_images():
    cell = grids.prompt_rows(_images(3, 8), per_prompt=8, shown=4)
    step = SIDE + grids._PAD
    assert cell.size == (4 * step - grids._PAD, 3 * step - grids._PAD)
    for prompt in range(3):
        assert [_colour_at(cell, prompt, k) for k in range(4)] == [
            (10 * prompt, 10 * k, 0) for k in range(4)
        ]


def test_fewer_images_than_shown_are_all_shown():
    cell = grids.prompt_rows(_images(2, 2), per_prompt=2, shown=4)
    assert cell.size == (2 * SIDE + grids._PAD, 2 * SIDE + grids._PAD)
    assert _colour_at(cell, 1, 1) == (10, 10, 0)


def test_without_a_count_per_prompt_one_strip():
    images = _images(2, 3)
    for per_prompt in (None, 4):  # unknown, or it does not divide the 6 images
        cell = grids.prompt_rows(images, per_prompt)
        assert cell.size == (6 * SIDE + 5 * grids._PAD, SIDE)


def test_the_title_says_what_a_cell_holds():
    assert grids.shown_note(8, 4) == " - a row per prompt, its first 4 of 8 images"
    assert grids.shown_note(2, 4) == " - a row per prompt"
    assert grids.shown_note(None) == ""
    # With the prompts: which row is which.
    assert grids.shown_note(2, 4, ["a sks star", "a red star"]) == (
        " - a row per prompt: 1. a sks star; 2. a red star"
    )


def _evaluation(epoch: int, prompts: int, per_prompt: int):
    from pathlib import Path

    from evaluators.objective import Diagnosis
    from evaluators.results import EpochEvaluation

    images = {("base", s, s): _images(prompts, per_prompt) for s in (0.5, 1.0)}
    return EpochEvaluation(
        epoch=epoch, lora_path=Path("lora.safetensors"), scores={}, images=images,
        diagnosis=Diagnosis(None, "not measured"), random_weights=False, checkpoints=["base"],
    )  # fmt: skip


def test_the_epoch_and_unet_te_grids_stack_each_cells_prompts(tmp_path):
    from evaluators.outputs import EpochStrengthGrids, write_unet_te_grids

    step = SIDE + grids._PAD
    saved = EpochStrengthGrids([0.5], per_prompt=6)  # three prompts of six images: 3 rows of 4
    for epoch in (1, 2):
        saved.add(_evaluation(epoch, 3, 6))
    with Image.open(saved.save(tmp_path)["grid_epoch_x_strength/base"]) as grid:
        cell_w, cell_h = 4 * step - grids._PAD, 3 * step - grids._PAD
        assert grid.width == grids._LABEL_W + 2 * (cell_w + grids._GAP)  # strengths 0.5, 1.0
        top = grid.height - 2 * (cell_h + grids._GAP)  # under the title: two epoch rows
        for epoch_row in range(2):
            y = top + epoch_row * (cell_h + grids._GAP) + SIDE // 2
            for prompt in range(3):
                x = grids._LABEL_W + 3 * step + SIDE // 2  # the fourth image
                assert grid.getpixel((x, y + prompt * step)) == (10 * prompt, 30, 0)
    files = write_unet_te_grids(_evaluation(2, 3, 6), tmp_path, [0.5, 1.0], [0.5, 1.0], 6)
    with Image.open(files["grid_unet_x_te/base"]) as grid:
        assert grid.height > 2 * (3 * step)  # two UNet rows of three prompt rows

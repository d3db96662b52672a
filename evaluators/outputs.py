"""Files an evaluation writes: metrics JSON and PNG grids, for tracking to log.

Layout under the evaluation's output folder (``<ckpt>`` = checkpoint label)::

    epoch-000004/metrics.json                 flat metrics, scores per cell, diagnosis
    epoch-000004/unet_x_te-<ckpt>.png          rows: UNet strength, columns: TE strength
    epoch_x_strength-<ckpt>.png                rows: epochs so far, columns: strength

Names get ``-RANDOM_WEIGHTS`` before the extension when a scoring model had random weights,
so no one mistakes a test run's numbers or grids for real scores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from evaluators.grids import labelled_grid, prompt_rows, save_png, shown_note
from evaluators.results import EpochEvaluation
from trainer.atomic_write import write_text

RANDOM_SUFFIX = "-RANDOM_WEIGHTS"


def _name(stem: str, suffix: str, random_weights: bool) -> str:
    return f"{stem}{RANDOM_SUFFIX if random_weights else ''}{suffix}"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def epoch_dir(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"epoch-{epoch:06d}"


def write_metrics(evaluation: EpochEvaluation, out_dir: Path) -> Path:
    """``metrics.json``: the flat metrics plus every cell's scores and the diagnosis."""
    payload = {
        "epoch": evaluation.epoch,
        "lora": str(evaluation.lora_path),
        "random_weights": evaluation.random_weights,
        "checkpoints": evaluation.checkpoints,
        "metrics": evaluation.metrics,
        "cells": [
            {"checkpoint": c, "unet": u, "te": t, "scores": s}
            for (c, u, t), s in sorted(evaluation.scores.items())
        ],
        "diagnosis": {
            "state": evaluation.diagnosis.state,
            "best_strength": evaluation.diagnosis.best_strength,
            "best_unet_strength": evaluation.diagnosis.best_unet_strength,
            "best_te_strength": evaluation.diagnosis.best_te_strength,
            "notes": evaluation.diagnosis.notes,
        },
        "seconds": evaluation.seconds,
    }
    folder = epoch_dir(out_dir, evaluation.epoch)
    path = folder / _name("metrics", ".json", evaluation.random_weights)
    write_text(path, json.dumps(payload, indent=2, sort_keys=False))
    return path


def unet_te_grid(
    evaluation: EpochEvaluation,
    checkpoint: str,
    unet: list[float],
    te: list[float],
    per_prompt: int | None = None,
    prompts: Sequence[str] = (),
) -> Image.Image:
    """``per_prompt``: images per prompt (each cell a row per prompt; else one strip);
    ``prompts``: the rows' prompts, listed in the title."""
    images = evaluation.images
    cells = {
        (f"unet {u!r}", f"te {t!r}"): prompt_rows(images[(checkpoint, u, t)], per_prompt)
        for u in unet
        for t in te
        if images.get((checkpoint, u, t))
    }
    title = f"epoch {evaluation.epoch} - {checkpoint} - UNet x TE strength"
    title += shown_note(per_prompt, prompts=prompts)
    if evaluation.random_weights:
        title += " (random-weight scorers)"
    return labelled_grid(cells, [f"unet {u!r}" for u in unet], [f"te {t!r}" for t in te], title)


def write_unet_te_grids(
    evaluation: EpochEvaluation,
    out_dir: Path,
    unet: list[float],
    te: list[float],
    per_prompt: int | None = None,
    prompts: Sequence[str] = (),
) -> dict[str, Path]:
    """One UNet x TE grid per checkpoint (nothing when the grid is empty)."""
    if not unet or not te or not any(evaluation.images.values()):
        return {}
    files = {}
    for checkpoint in evaluation.checkpoints:
        grid = unet_te_grid(evaluation, checkpoint, unet, te, per_prompt, prompts)
        name = _name(f"unet_x_te-{_safe(checkpoint)}", ".png", evaluation.random_weights)
        files[f"grid_unet_x_te/{checkpoint}"] = save_png(
            grid, epoch_dir(out_dir, evaluation.epoch) / name
        )
    return files


class EpochStrengthGrids:
    """The epoch x strength grid per checkpoint, growing as epochs are evaluated."""

    def __init__(self, strengths: list[float], per_prompt: int | None = None):
        self.strengths = sorted({*strengths, 1.0})
        self.per_prompt = per_prompt  # images per prompt: each cell a row per prompt
        self.rows: dict[str, dict[int, dict[float, Image.Image]]] = {}
        self.random_weights = False

    def add(self, evaluation: EpochEvaluation) -> None:
        self.random_weights |= evaluation.random_weights
        for (checkpoint, u, t), images in evaluation.images.items():
            if u == t and u in self.strengths and images:
                row = self.rows.setdefault(checkpoint, {}).setdefault(evaluation.epoch, {})
                row[u] = prompt_rows(images, self.per_prompt)

    def save(self, out_dir: Path, prompts: Sequence[str] = ()) -> dict[str, Path]:
        """``prompts``: the rows' prompts of every cell, listed in the title."""
        files = {}
        columns = [f"s={float(s)!r}" for s in self.strengths]
        for checkpoint, rows in self.rows.items():
            epochs = sorted(rows)
            cells = {
                (f"epoch {e}", columns[i]): rows[e][s]
                for e in epochs
                for i, s in enumerate(self.strengths)
                if s in rows[e]
            }
            title = f"{checkpoint} - epoch x strength (UNet = TE)"
            title += shown_note(self.per_prompt, prompts=prompts)
            grid = labelled_grid(cells, [f"epoch {e}" for e in epochs], columns, title)
            name = _name(f"epoch_x_strength-{_safe(checkpoint)}", ".png", self.random_weights)
            files[f"grid_epoch_x_strength/{checkpoint}"] = save_png(grid, out_dir / name)
        return files

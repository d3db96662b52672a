r"""One epoch's evaluation as a result object and as the flat metric dict tracking logs.

Metric names (all prefixed ``eval/``; scores averaged over the test checkpoints):

* ``eval/<m>``                      at UNet = TE = 1.0 (the LoRA as trained)
* ``eval/<m>@unet<u>_te<t>``        at every evaluated strength pair, e.g.
                                    ``eval/clip_i@unet0.5_te1.0``
* ``eval/ckpt/<checkpoint>/<m>``    per checkpoint at 1.0 (only with several checkpoints)
* ``eval/best_strength``, ``eval/best_unet_strength``, ``eval/best_te_strength``,
  ``eval/suggested_unet_lr_factor``, ``eval/suggested_te_lr_factor``,
  ``eval/training_state`` (-1 over-trained, 0 well-trained, 1 under-trained)
* ``eval/random_weights``: 1.0 when a scoring model had random weights (``tiny``): then every
  fidelity / adherence number of the epoch is meaningless; 0.0 otherwise.

``<m>`` is a scorer metric (``clip_i``, ``clip_t``, ``clip_score``, ``dino``, ``face_identity``,
``face_similarity``, ``face_distance``, ``face_match_rate``, ``faces_not_found``, ``val_loss``)
or a term of the objective (``fidelity``, ``adherence``, ``objective``).

MLflow allows only ``[/\w.\- :]`` in metric names: log them through ``mlflow_safe_name``
(``eval/clip_i@unet0.5_te1.0`` -> ``eval/clip_i_at_unet0.5_te1.0``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from evaluators.objective import Diagnosis

PREFIX = "eval/"
Cell = tuple[str, float, float]  # (checkpoint label, UNet strength, TE strength)


def mlflow_safe_name(name: str) -> str:
    """MLflow refuses ``@`` in metric names; it sanitises them as ``_at_`` itself (autolog)."""
    return name.replace("@", "_at_")


def strength_label(unet: float, text_encoder: float) -> str:
    """``unet0.5_te1.0``: strengths always written with a decimal point."""
    return f"unet{float(unet)!r}_te{float(text_encoder)!r}"


def average_over_checkpoints(
    scores: Mapping[Cell, Mapping[str, float]],
) -> dict[tuple[float, float], dict[str, float]]:
    """Per strength pair, each metric's mean over the checkpoints that have it."""
    sums: dict[tuple[float, float], dict[str, list[float]]] = {}
    for (_, u, t), cell in scores.items():
        bucket = sums.setdefault((u, t), {})
        for name, value in cell.items():
            bucket.setdefault(name, []).append(value)
    return {
        pair: {name: sum(v) / len(v) for name, v in metrics.items()}
        for pair, metrics in sums.items()
    }


def flat_metrics(
    scores: Mapping[Cell, Mapping[str, float]],
    diagnosis: Diagnosis,
    random_weights: bool,
) -> dict[str, float]:
    """The flat ``eval/...`` dict described in the module docstring."""
    averaged = average_over_checkpoints(scores)
    out: dict[str, float] = {}
    for name, value in averaged[(1.0, 1.0)].items():
        out[PREFIX + name] = value
    for (u, t), metrics in sorted(averaged.items()):
        for name, value in metrics.items():
            out[f"{PREFIX}{name}@{strength_label(u, t)}"] = value
    checkpoints = sorted({c for c, _, _ in scores})
    if len(checkpoints) > 1:
        for label in checkpoints:
            for name, value in scores[(label, 1.0, 1.0)].items():
                out[f"{PREFIX}ckpt/{label}/{name}"] = value
    for name, value in diagnosis.metrics().items():
        out[PREFIX + name] = float(value)
    out[PREFIX + "random_weights"] = 1.0 if random_weights else 0.0
    return out


@dataclass
class EpochEvaluation:
    """Everything one LoRA file's evaluation produced."""

    epoch: int
    lora_path: Path
    scores: dict[Cell, dict[str, float]]
    """Per (checkpoint, UNet strength, TE strength): scorer metrics and objective terms."""
    images: dict[Cell, list[Image.Image]]
    """The generated images per cell, prompt-major (empty without generation)."""
    diagnosis: Diagnosis
    random_weights: bool
    """True when any scoring model had random weights: the scores measure nothing."""
    checkpoints: list[str]
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    """Written outputs by kind (``metrics``, ``grid_strengths/<ckpt>``, ...)."""

    @property
    def objective(self) -> float:
        return self.metrics["eval/objective"]

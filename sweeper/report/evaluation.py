"""The best trial's evaluation outputs (``eval/`` folder of the evaluators): per-epoch metrics
JSON and the PNG grids, read from the trial's folder when this machine has it, else downloaded
from the trial's MLflow run (``eval/`` artifacts)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_STRENGTH = re.compile(r"^eval/objective@unet([0-9.]+)_te([0-9.]+)$")


@dataclass
class EpochEval:
    """One evaluated epoch, as ``metrics.json`` records it."""

    epoch: int
    metrics: dict[str, float]
    cells: list[dict[str, Any]]
    diagnosis: dict[str, Any]
    checkpoints: list[str]
    random_weights: bool

    def objective_by_pair(self) -> dict[tuple[float, float], float]:
        """``{(unet, te): objective}`` averaged over checkpoints, from the flat metrics."""
        out = {}
        for name, value in self.metrics.items():
            match = _STRENGTH.match(name)
            if match:
                out[(float(match.group(1)), float(match.group(2)))] = value
        return out


@dataclass
class Picture:
    title: str
    png: bytes


@dataclass
class EvaluationOutputs:
    evals: dict[int, EpochEval] = field(default_factory=dict)
    epoch_grids: list[Picture] = field(default_factory=list)
    unet_te_grids: list[Picture] = field(default_factory=list)
    source: str = ""


def read_eval_folder(folder: Path, best_epoch: int | None) -> EvaluationOutputs:
    """Metrics of every evaluated epoch; the epoch x strength grids; the best epoch's UNet x TE
    grids (the last evaluated epoch's when the best is unknown)."""
    out = EvaluationOutputs(source=str(folder))
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _EPOCH_DIR.match(sub.name)
        if match and sub.is_dir():
            for path in sorted(sub.glob("metrics*.json")):
                payload = json.loads(path.read_text())
                out.evals[int(match.group(1))] = EpochEval(
                    epoch=int(payload["epoch"]),
                    metrics=payload.get("metrics", {}),
                    cells=payload.get("cells", []),
                    diagnosis=payload.get("diagnosis", {}),
                    checkpoints=payload.get("checkpoints", []),
                    random_weights=bool(payload.get("random_weights")),
                )
    for path in sorted(folder.glob("epoch_x_strength-*.png")) if folder.is_dir() else []:
        out.epoch_grids.append(Picture(path.stem, path.read_bytes()))
    epoch = best_epoch if best_epoch in out.evals else max(out.evals, default=None)
    if epoch is not None:
        for path in sorted((folder / f"epoch-{epoch:06d}").glob("unet_x_te-*.png")):
            out.unet_te_grids.append(Picture(f"epoch {epoch}: {path.stem}", path.read_bytes()))
    return out


def local_config(output_dir: str | None) -> dict | None:
    """The trial's ``resolved_config.yaml`` (written by the trainer) as plain data."""
    if not output_dir:
        return None
    path = Path(output_dir) / "resolved_config.yaml"
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def local_eval_folder(output_dir: str | None, config: dict | None) -> Path | None:
    if not output_dir:
        return None
    configured = ((config or {}).get("eval") or {}).get("output_dir")
    folder = Path(configured) if configured else Path(output_dir) / "eval"
    return folder if folder.is_dir() else None


def mlflow_eval_folder(reader, run_id: str | None, scratch: Path) -> Path | None:
    """Download the run's ``eval/`` artifacts into ``scratch``."""
    if reader is None or not run_id or not reader.artifact_files(run_id, "eval"):
        return None
    return reader.download(run_id, "eval", scratch / run_id)


def mlflow_config(reader, run_id: str | None, scratch: Path) -> dict | None:
    if reader is None or not run_id:
        return None
    path = reader.download(run_id, "config/resolved_config.yaml", scratch / f"{run_id}-config")
    if path is None or not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)

"""Training modes besides LoRA: DreamBooth (full fine-tuning) and textual inversion.

``trainer.run.train_from_config`` hands every ``train.mode`` other than ``lora`` to
:func:`run_mode`. Each mode is selected by its ``train`` group (``train=dreambooth``,
``train=textual_inversion``), which sets ``train.mode`` and adds the mode's keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig

from trainer.errors import ConfigError
from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import TrainResult
from trainer.modes.settings import MODES


def run_mode(
    cfg: DictConfig, callbacks: Iterable[TrainingCallback] = (), components=None
) -> TrainResult:
    """Train ``cfg`` (already checked by ``validate_run``) in its ``train.mode``."""
    mode = cfg.train.mode
    if mode == "dreambooth":
        from trainer.modes.dreambooth import train_dreambooth

        return train_dreambooth(cfg, callbacks, components)
    if mode == "textual_inversion":
        from trainer.modes.textual_inversion import train_textual_inversion

        return train_textual_inversion(cfg, callbacks, components)
    raise ConfigError(f"train.mode: {mode!r} is not handled here; allowed: {MODES[1:]}")


__all__ = ["MODES", "run_mode"]

"""One run of the task: what ``python -m sweeper`` does without ``-m``.

Later issues hang evaluation, Optuna reporting and MLflow tracking on the trainer's callbacks;
here a run trains, writes its adapter files and prints where they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from trainer.loop.callbacks import TrainingCallback
from trainer.run import train_from_config

log = logging.getLogger(__name__)


class LogMetrics(TrainingCallback):
    """Writes the training metrics to the run's log every ``every`` steps."""

    def __init__(self, every: int = 10):
        self.every = every

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            log.info("step %d: %s", step, shown)

    def on_epoch_saved(self, epoch: int, path: Path) -> None:
        log.info("epoch %d saved to %s", epoch, path)


def run_task(cfg: DictConfig) -> float:
    """Train once from ``cfg``; returns the mean training loss of the last epoch."""
    result = train_from_config(cfg, callbacks=[LogMetrics()])
    out = Path(cfg.paths.output_dir)
    print(
        f"\nTrained {result.global_step} steps over {result.epochs_done} epochs "
        f"in {result.seconds:.1f} s (last-epoch mean loss {result.mean_loss_last_epoch:.4f})."
    )
    print(f"Latent cache: {result.cache_stats}")
    print(f"LoRA files ({len(result.saved)}) in {out}:")
    for saved in result.saved:
        print(f"  epoch {saved.epoch:>3}  step {saved.step:>5}  {saved.path}")
    return result.mean_loss_last_epoch

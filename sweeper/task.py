"""The task function: what one Hydra job of ``python -m sweeper`` does.

Launched by the Optuna sweeper (the config has ``optuna.study``/``optuna.trial_number``) it runs
one trial (``sweeper.trial``); otherwise it trains once and prints where the files are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sweeper.callbacks import LogMetrics, NonFiniteLossGuard, configured_callbacks
from trainer.run import train_from_config

log = logging.getLogger(__name__)


def run_task(cfg: DictConfig) -> Any:
    """One job: a trial's outcome (dict) under the sweeper, else the last-epoch mean loss."""
    if cfg.get("optuna") is not None:
        from sweeper.trial import run_trial

        return run_trial(cfg)
    callbacks = [LogMetrics(), NonFiniteLossGuard(), *configured_callbacks(cfg)]
    result = train_from_config(cfg, callbacks=callbacks)
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

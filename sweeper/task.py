"""The task function: what one Hydra job of ``python -m sweeper`` does.

Launched by the Optuna sweeper (the config has ``optuna.study``/``optuna.trial_number``) it runs
one trial (``sweeper.trial``). Otherwise it is one run, trained and evaluated exactly as one
trial with the same config would be (``search.metrics`` decides whether the evaluators run), so
a trial's reproduction command (``python -m sweeper <its overrides>``) prints that trial's
objective again; it is tracked as one MLflow run and prints where the files are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeper.callbacks import (
    EpochLoss,
    LogMetrics,
    NonFiniteLossGuard,
    configured_callbacks,
)
from sweeper.checks import (
    needs_evaluation,
    objective_metrics,
    run_problems,
)
from trainer.loop.callbacks import TrainingCallback
from trainer.run import train_from_config
from trainer.settings.spec import RunSpec
from trainer.validate import validate_run

if TYPE_CHECKING:
    from evaluators.model_cache import ModelPool

log = logging.getLogger(__name__)


def run_task(cfg: DictConfig, spec: RunSpec | None = None, pool: ModelPool | None = None) -> Any:
    """One job: a trial's outcome (dict) under the sweeper, else the last-epoch mean loss.
    ``spec``: the run's settings, already checked (``python -m sweeper`` checks them first);
    ``pool``: where the evaluation loads its models, kept by the caller across jobs (default:
    a new one for this job)."""
    if cfg.get("optuna") is not None:
        from sweeper.trial import run_trial

        return run_trial(cfg, pool)
    return run_single(cfg, spec, pool)


def run_single(
    cfg: DictConfig, spec: RunSpec | None = None, pool: ModelPool | None = None
) -> float:
    """Train (and evaluate, when the objective needs it) once, tracked as one MLflow run.
    ``spec``: the run's settings, already checked (keys, data and libraries); else checked
    here."""
    from sweeper.tracking import MlflowCallback, single_run

    metrics = objective_metrics(cfg)
    directions = list(OmegaConf.select(cfg, "search.directions", default=None) or ["maximize"])
    # Bad input stops here, before a tracked run exists: a typo is not an experiment. (A spec
    # from ``python -m sweeper`` was checked there, libraries included.)
    if spec is None:
        spec = validate_run(cfg, extra_checks=[run_problems])
    with single_run(cfg) as run:
        callbacks: list[TrainingCallback] = [
            LogMetrics(),
            EpochLoss(),
            NonFiniteLossGuard(),
            *configured_callbacks(cfg),
        ]
        evaluation = None
        if needs_evaluation(metrics):
            from evaluators.callback import EvaluationCallback

            evaluation = EvaluationCallback(cfg, pool=pool)
            callbacks.append(evaluation)
        callbacks.append(MlflowCallback(run, evaluation))
        result = train_from_config(cfg, callbacks=callbacks, spec=spec)
        merged = result.scores.rows()
        best = result.scores.best(metrics[0], directions[0])
        run.complete("COMPLETE", best[0] if best else None, result.saved, result.stopped_early)
    _print_run(cfg, result, merged, best, metrics)
    return result.mean_loss_last_epoch


def _print_run(cfg: DictConfig, result, merged: dict, best, metrics: list[str]) -> None:
    out = Path(cfg.paths.output_dir)
    print(
        f"\nTrained {result.global_step} steps over {result.epochs_done} epochs "
        f"in {result.seconds:.1f} s (last-epoch mean loss {result.mean_loss_last_epoch:.4f})."
    )
    print(f"Latent cache: {result.cache_stats}")
    print(f"LoRA files ({len(result.saved)}) in {out}:")
    for saved in result.saved:
        print(f"  epoch {saved.epoch:>3}  step {saved.step:>5}  {saved.path}")
    if best is not None:
        # repr: every digit, so the number compares exactly with a trial's value.
        scores = merged[best[0]]
        values = ", ".join(f"{m} = {scores[m]!r}" for m in metrics if m in scores)
        print(f"best epoch {best[0]}: {values}")

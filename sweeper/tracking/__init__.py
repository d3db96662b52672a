"""MLflow tracking: the one package that knows MLflow (DESIGN.md, "Tracking and the report").

One experiment per study; the sweeper process opens a parent run per sweep (a rerun of the same
study reopens it) and passes its id to every job (``+tracking.parent_run_id=...``); each trial
is a child run nested under it; a single ``python -m sweeper`` run is one run. What a run holds:

* params: the flattened resolved config, plus ``sampled/<key>`` for a trial's sampled values;
* tags: ``optuna.study``, ``optuna.trial_number``, ``optuna.trial_state``,
  ``lorasweep.best_epoch``, ``lorasweep.stop_reason`` / ``fail_reason``, ``git.commit``,
  ``version.<package>``, ``data.hash``;
* metrics: every training metric per logged step and ``train/loss_moving_avg``; every
  ``eval/*`` and ``train/epoch_loss`` per epoch at ``step=epoch``; on the parent,
  ``trials/<metric>`` and ``trials/best_value`` at ``step=trial number``;
* artifacts: ``config/resolved_config.yaml``, ``eval/...`` (metrics JSON, image grids),
  ``scores/epoch_scores.csv|json``, ``lora/`` (the kept adapter files); on the parent, the
  results file and ``report/``.

Job side (:mod:`.runs`, :mod:`.callback`)::

    with trial_run(cfg, trial) as run:                # or single_run(cfg)
        callbacks.append(MlflowCallback(run, sources, evaluation))
        result = train_from_config(cfg, callbacks)
        run.complete("COMPLETE", best_epoch, result.saved, result.stopped_early)

Sweeper side: :mod:`.sweep`. Tracking never fails a run: MLflow errors are warnings.
"""

from sweeper.tracking.callback import MlflowCallback
from sweeper.tracking.runs import (
    Tracker,
    TrackingSettings,
    read_tracking,
    single_run,
    trial_run,
)
from sweeper.tracking.sweep import (
    close_dead_runs,
    dashboard_url,
    finish_sweep_run,
    job_overrides,
    log_report,
    record_trial,
    start_sweep_run,
)

__all__ = [
    "MlflowCallback",
    "Tracker",
    "TrackingSettings",
    "close_dead_runs",
    "dashboard_url",
    "finish_sweep_run",
    "job_overrides",
    "log_report",
    "read_tracking",
    "record_trial",
    "single_run",
    "start_sweep_run",
    "trial_run",
]

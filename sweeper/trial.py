"""One Optuna trial, run as a Hydra job: in the sweeper's process or any other.

The sweeper asks the study for a trial and launches a job with the sampled overrides plus the
trial's identity (``+optuna.study=<name> +optuna.trial_number=<n>``). The job re-opens the study
from the storage named by its own config, so it works the same in-process, in a joblib worker
or on another machine. After each evaluated epoch it reports the objective
(``trial.report(value, epoch)``) and stops training when the pruner says so. It returns the
outcome; the sweeper tells the study (COMPLETE, PRUNED, or FAIL with the reason).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from sweeper.callbacks import (
    EpochLoss,
    LogMetrics,
    NonFiniteLossGuard,
    configured_callbacks,
)
from sweeper.checks import needs_evaluation, run_problems
from sweeper.search_config import SearchSettings, read_settings
from sweeper.study import build_pruner, make_storage, storage_url
from trainer.errors import LorasweepError
from trainer.loop.callbacks import StopTraining, TrainingCallback
from trainer.validate import validate_run

log = logging.getLogger(__name__)


class MetricNotFoundError(LorasweepError):
    """``search.metrics`` names a metric that the evaluation does not produce."""


class NoObjectiveError(LorasweepError):
    """No evaluated epoch gave a finite value for the objective(s)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class OptunaReporter(TrainingCallback):
    """Reports each evaluated epoch's objective to the trial and prunes on the pruner's word.

    ``sources`` are callbacks with ``results[epoch][metric]`` (the evaluation callback, the
    training-loss tracker); it must come after them in the callback list. A multi-objective
    trial is not reported (Optuna prunes single objectives only): its epochs are recorded.
    """

    def __init__(self, trial: optuna.trial.Trial, sources: list, settings: SearchSettings):
        self.trial, self.sources = trial, sources
        self.metrics, self.directions = settings.metrics, settings.directions
        self.single = not settings.multi_objective
        self.history: dict[int, dict[str, float]] = {}
        self.total_epochs: int | None = None
        self.pruned_at: int | None = None

    def on_train_start(self, info: dict) -> None:
        self.total_epochs = info.get("epochs")

    def _scores(self, epoch: int) -> dict[str, float] | None:
        merged: dict[str, float] = {}
        covered = True
        for source in self.sources:
            found = source.results.get(epoch)
            covered = covered and found is not None
            merged.update(found or {})
        missing = [m for m in self.metrics if m not in merged]
        if not missing:
            return merged
        if covered:  # every source scored this epoch, and still no such metric
            raise MetricNotFoundError(
                f"search.metrics: {missing} not produced at epoch {epoch}; "
                f"available: {sorted(merged)}"
            )
        return None  # an epoch the evaluation skips (eval.every_n_epochs)

    def _record(self, epoch: int, scores: dict[str, float]) -> None:
        self.history[epoch] = {m: float(scores[m]) for m in self.metrics}
        self.trial.set_user_attr("epoch_metrics", {str(e): v for e, v in self.history.items()})

    def on_train_end(self, result) -> None:
        # The evaluation scores a last file its cadence skipped only when training ends (it
        # runs before this callback): such an epoch still counts for the best epoch.
        scored = set().union(*(source.results for source in self.sources))
        for epoch in sorted(scored - set(self.history)):
            scores = self._scores(epoch)
            if scores is not None:
                self._record(epoch, scores)

    def on_epoch_saved(self, epoch: int, path: Path) -> None:
        scores = self._scores(epoch)
        if scores is None:
            return
        self._record(epoch, scores)
        if not self.single:
            return
        value = self.history[epoch][self.metrics[0]]
        self.trial.report(value, epoch)
        last = self.total_epochs is not None and epoch >= self.total_epochs
        if not last and self.trial.should_prune():
            self.pruned_at = epoch
            raise StopTraining(
                f"pruned at epoch {epoch}: {self.metrics[0]}={value:.5g}", pruned=True
            )

    def outcome(self) -> dict[str, Any]:
        """The trial's values: those of its best epoch (by the first metric)."""
        finite = {
            e: h for e, h in self.history.items() if all(math.isfinite(v) for v in h.values())
        }
        if not finite:
            raise NoObjectiveError(
                f"no evaluated epoch gave finite {list(self.metrics)}: {self.history}"
            )
        pick = max if self.directions[0] == "maximize" else min
        best = pick(sorted(finite), key=lambda e: finite[e][self.metrics[0]])
        return {
            "state": "PRUNED" if self.pruned_at else "COMPLETE",
            "values": [finite[best][m] for m in self.metrics],
            "best_epoch": best,
            "pruned_at_epoch": self.pruned_at,
        }


def open_trial(cfg: DictConfig, settings: SearchSettings) -> optuna.trial.Trial:
    """The running trial named by ``cfg.optuna`` in the study of ``cfg.search``'s storage."""
    storage = make_storage(storage_url(settings, cfg.paths.runs_dir))
    study = optuna.load_study(
        study_name=cfg.optuna.study,
        storage=storage,
        # The job never samples (its parameters arrived as overrides); the pruner must be the
        # sweep's own, since should_prune() asks the study's pruner.
        sampler=optuna.samplers.RandomSampler(),
        pruner=build_pruner(settings),
    )
    study_id = storage.get_study_id_from_name(cfg.optuna.study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        study_id, int(cfg.optuna.trial_number)
    )
    return optuna.trial.Trial(study, trial_id)


def run_trial(cfg: DictConfig) -> dict[str, Any]:
    """Train the trial's adapter, reporting each evaluated epoch; returns the outcome.

    The trial is tracked as a child of the sweep's MLflow run; a trial that raises ends its
    run as FAILED with the reason, having logged everything up to the failure."""
    from sweeper.tracking import trial_run

    settings = read_settings(cfg.search)
    trial = open_trial(cfg, settings)
    trial.set_user_attr("output_dir", str(cfg.paths.output_dir))
    trial.set_user_attr("job_worker", worker_name())
    with trial_run(cfg, trial) as run:
        return _train_trial(cfg, settings, trial, run)


def _train_trial(cfg: DictConfig, settings: SearchSettings, trial, run) -> dict[str, Any]:
    from sweeper.tracking import MlflowCallback
    from trainer.run import train_from_config

    # Every problem of the trial's config at once, before any model loads.
    spec = validate_run(cfg, extra_checks=[run_problems])
    losses = EpochLoss()
    sources: list = [losses]
    callbacks: list[TrainingCallback] = [
        LogMetrics(),
        losses,
        NonFiniteLossGuard(),
        *configured_callbacks(cfg),
    ]
    evaluation = None
    if needs_evaluation(settings.metrics):
        from evaluators.callback import EvaluationCallback

        evaluation = EvaluationCallback(cfg)
        callbacks.append(evaluation)
        sources.append(evaluation)
    # Tracking logs each epoch before the reporter may stop training after it.
    callbacks.append(MlflowCallback(run, sources, evaluation))
    reporter = OptunaReporter(trial, sources, settings)
    callbacks.append(reporter)
    result = train_from_config(cfg, callbacks=callbacks, spec=spec)
    outcome = reporter.outcome()
    outcome["epochs_trained"] = result.epochs_done
    files = {str(s.epoch): str(s.path) for s in result.saved}
    trial.set_user_attr("files", files)
    trial.set_user_attr("best_epoch", outcome["best_epoch"])
    trial.set_user_attr("best_file", files.get(str(outcome["best_epoch"])))
    run.complete(outcome["state"], outcome["best_epoch"], result.saved, result.stopped_early)
    log.info(
        "trial %d: %s, values %s at epoch %d",
        trial.number,
        outcome["state"],
        outcome["values"],
        outcome["best_epoch"],
    )
    return outcome

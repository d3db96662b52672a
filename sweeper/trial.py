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
import os
import socket
from typing import TYPE_CHECKING, Any

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
from sweeper.storage import make_storage, storage_url
from sweeper.study import build_pruner
from trainer.errors import LorasweepError
from trainer.loop.callbacks import EpochScores, StopTraining, TrainingCallback, best_epoch
from trainer.validate import validate_run

if TYPE_CHECKING:
    from evaluators.model_cache import ModelPool

log = logging.getLogger(__name__)


class MetricNotFoundError(LorasweepError):
    """``search.metrics`` names a metric that the evaluation does not produce."""


class NoObjectiveError(LorasweepError):
    """No evaluated epoch gave a finite value for the objective(s)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class OptunaReporter(TrainingCallback):
    """Reports each evaluated epoch's objective to the trial and prunes on the pruner's word.

    It reads the run's scores (``record.scores``, filled by the evaluation and the training-loss
    tracker in ``on_epoch_end``) in ``on_epoch_scored``, so its place in the callback list does
    not matter. A multi-objective trial is not reported (Optuna prunes single objectives only):
    its epochs are recorded.
    """

    def __init__(self, trial: optuna.trial.Trial, settings: SearchSettings):
        self.trial = trial
        self.metrics, self.directions = settings.metrics, settings.directions
        self.single = not settings.multi_objective
        self.history: dict[int, dict[str, float]] = {}
        self.pruned_at: int | None = None

    def _scores(self, epoch: int, scores: EpochScores) -> dict[str, float] | None:
        found = scores.get(epoch)
        missing = [m for m in self.metrics if m not in found]
        if not missing:
            return found
        # A metric's namespace ("eval/", "train/") names what measures it: when that measured
        # this epoch and still gave no such metric, the name is wrong; otherwise the epoch is
        # one the evaluation skips (eval.every_n_epochs).
        measured = {name.split("/", 1)[0] for name in found}
        misnamed = [m for m in missing if m.split("/", 1)[0] in measured]
        if misnamed:
            raise MetricNotFoundError(
                f"search.metrics: {misnamed} not produced at epoch {epoch}; "
                f"available: {sorted(found)}"
            )
        return None

    def _record(self, epoch: int, scores: dict[str, float]) -> None:
        self.history[epoch] = {m: float(scores[m]) for m in self.metrics}
        self.trial.set_user_attr("epoch_metrics", {str(e): v for e, v in self.history.items()})

    def on_train_scored(self, result) -> None:
        # The evaluation scores a last file its cadence skipped only when training ends: such
        # an epoch still counts for the best epoch.
        for epoch in result.scores:
            if epoch not in self.history:
                scores = self._scores(epoch, result.scores)
                if scores is not None:
                    self._record(epoch, scores)

    def on_epoch_scored(self, record) -> None:
        if record.path is None:
            return
        scores = self._scores(record.epoch, record.scores)
        if scores is None:
            return
        self._record(record.epoch, scores)
        if not self.single:
            return
        value = self.history[record.epoch][self.metrics[0]]
        self.trial.report(value, record.epoch)
        if not record.is_last and self.trial.should_prune():
            self.pruned_at = record.epoch
            raise StopTraining(
                f"pruned at epoch {record.epoch}: {self.metrics[0]}={value:.5g}", pruned=True
            )

    def outcome(self) -> dict[str, Any]:
        """The trial's values: those of its best epoch (by the first metric)."""
        best = best_epoch(self.history, self.metrics, self.directions[0])
        if best is None:
            raise NoObjectiveError(
                f"no evaluated epoch gave finite {list(self.metrics)}: {self.history}"
            )
        return {
            "state": "PRUNED" if self.pruned_at else "COMPLETE",
            "values": [self.history[best[0]][m] for m in self.metrics],
            "best_epoch": best[0],
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


def run_trial(cfg: DictConfig, pool: ModelPool | None = None) -> dict[str, Any]:
    """Train the trial's adapter, reporting each evaluated epoch; returns the outcome.

    The trial is tracked as a child of the sweep's MLflow run; a trial that raises ends its
    run as FAILED with the reason, having logged everything up to the failure."""
    from sweeper.tracking import trial_run

    settings = read_settings(cfg.search)
    device = None
    if settings.devices:  # before anything initialises CUDA in this process
        from sweeper.devices import claim_device, lock_folder

        device = claim_device(settings.devices, lock_folder(settings.device_lock_dir))
    trial = open_trial(cfg, settings)
    trial.set_user_attr("output_dir", str(cfg.paths.output_dir))
    trial.set_user_attr("job_worker", worker_name())
    if os.environ.get("SLURM_JOB_ID"):  # launched by Slurm (hydra/launcher=submitit_slurm)
        trial.set_user_attr("slurm_job_id", os.environ["SLURM_JOB_ID"])
    if device is not None:
        trial.set_user_attr("device", device)
        trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
        log.info("trial %d runs on device %s", trial.number, device)
    with trial_run(cfg, trial) as run:
        return _train_trial(cfg, settings, trial, run, pool)


def _train_trial(
    cfg: DictConfig, settings: SearchSettings, trial, run, pool: ModelPool | None
) -> dict[str, Any]:
    from sweeper.tracking import MlflowCallback
    from trainer.run import train_from_config

    # Every problem of the trial's config at once, before any model loads.
    spec = validate_run(cfg, extra_checks=[run_problems])
    callbacks: list[TrainingCallback] = [
        LogMetrics(),
        EpochLoss(),
        NonFiniteLossGuard(),
        *configured_callbacks(cfg),
    ]
    evaluation = None
    if needs_evaluation(settings.metrics):
        from evaluators.callback import EvaluationCallback

        evaluation = EvaluationCallback(cfg, pool=pool)
        callbacks.append(evaluation)
    reporter = OptunaReporter(trial, settings)
    callbacks += [MlflowCallback(run, evaluation), reporter]
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

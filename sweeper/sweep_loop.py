"""The sweep: check the whole search config, then ask -> launch -> tell until the study has
``n_trials`` finished (complete or pruned) trials.

Several processes running the same command (on any machines, one storage) share the study:
each counts the trials finished or running anywhere, so together they stop at ``n_trials``,
and the storage hands every trial to exactly one of them. While a batch runs, this process
records a heartbeat for its trials; a trial whose process died goes stale, is failed by the
next process that looks (``fail_stale_trials``) and queued again with the same parameters.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from sweeper.checks import run_problems
from sweeper.results import (
    RESULTS_FILE,
    print_summary,
    run_environment,
    summarize,
    write_results,
)
from sweeper.search_config import SearchSettings, build_search_space, read_settings
from sweeper.search_space import SearchSpace, format_value
from sweeper.search_values import fixed_problems
from sweeper.study import (
    build_pruner,
    build_sampler,
    count_states,
    derive_study_name,
    make_storage,
    n_done,
    open_study,
    storage_problem,
    storage_url,
    tell,
)
from sweeper.tracking import (
    Tracker,
    finish_sweep_run,
    job_overrides,
    record_trial,
    start_sweep_run,
)
from sweeper.trial import MetricNotFoundError, worker_name
from trainer.errors import ConfigError, LorasweepError

log = logging.getLogger("sweeper")


class SweepAbortedError(LorasweepError):
    """Too many trials failed (``search.max_failure_rate``), or the objective is misnamed."""


class ResultsNotWrittenError(Exception):
    """The results file could not be written (a full disk ...); the study itself is intact."""


class Heartbeat:
    """Records a heartbeat for the given trials every ``interval`` s while a batch runs."""

    def __init__(self, storage, trial_ids: Sequence[int], interval: int | None):
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried next time
                    log.warning("heartbeat for trial id %d failed: %s", trial_id, exc)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.interval:
            self._stop.set()
            self._thread.join()


class SweepRunner:
    """One sweeper process of a study. ``config`` is the composed config (fixed overrides
    applied), ``launcher`` a Hydra launcher, ``config_loader`` Hydra's (for group options)."""

    def __init__(self, config: DictConfig, launcher, config_loader):
        self.config, self.launcher, self.loader = config, launcher, config_loader
        self.job_idx = 0
        self.failed_here = 0
        self.tracker = Tracker()  # the study's MLflow parent run (set in run())

    # -- set-up: everything is checked before the storage is touched -------------------------
    def plan(self, arguments: Sequence[str]) -> tuple[SearchSettings, SearchSpace, list[str]]:
        parser = OverridesParser.create(config_loader=self.loader)
        overrides = parser.parse_overrides(list(arguments))
        fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
        choices = set(self.config.hydra.runtime.choices)

        def group_options(name: str) -> list[str] | None:
            return self.loader.get_group_options(name) if name in choices else None

        # Every problem of every part at once: the study settings, the storage, the space and
        # what every trial's validation would say about the keys it does not search (the
        # trainer's keys and data, the eval group and the metrics, unknown keys).
        problems: list[str] = []
        settings = space = None
        try:
            settings = read_settings(self.config.search)
        except ConfigError as err:
            problems += err.problems
        if settings is not None:
            problem = storage_problem(storage_url(settings, self.config.paths.runs_dir))
            if problem:  # the default storage lives in the runs folder
                key = "search.storage" if settings.storage else "paths.runs_dir (search.storage)"
                problems.append(f"{key}: {problem}")
        try:
            space = build_search_space(self.config.search, self.config, overrides, group_options)
        except ConfigError as err:
            problems += err.problems
        searched = space.keys if space is not None else []
        problems += fixed_problems(self.config, searched, [run_problems])
        if problems:
            raise ConfigError(problems)
        assert settings is not None and space is not None
        build_sampler(settings, space)
        build_pruner(settings)
        return settings, space, fixed

    def _adaptive(self, fixed: list[str]):
        from trainer.optim.optimizers import is_adaptive

        base = is_adaptive(self.config.optimizer)
        cache: dict[str, bool] = {}

        def decide(values: dict[str, Any]) -> bool:
            choice = values.get("optimizer")
            if choice is None:
                return base
            if choice not in cache:
                composed = self.loader.load_sweep_config(
                    self.config, [*fixed, f"optimizer={choice}"]
                )
                cache[choice] = is_adaptive(composed.optimizer)
            return cache[choice]

        return decide

    def _n_jobs(self, settings: SearchSettings) -> int:
        if settings.n_jobs:
            return settings.n_jobs
        launcher_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=None)
        if isinstance(launcher_jobs, int) and launcher_jobs != 0:
            return launcher_jobs if launcher_jobs > 0 else max(1, os.cpu_count() or 1)
        return 1

    # -- the loop --------------------------------------------------------------------------
    def run(self, arguments: Sequence[str]) -> dict:
        settings, space, fixed = self.plan(arguments)
        adaptive = self._adaptive(fixed)
        # Resolved now: each job replaces Hydra's global config with its own.
        results_path = Path(str(self.config.hydra.sweep.dir)) / RESULTS_FILE
        url = storage_url(settings, self.config.paths.runs_dir)
        storage = make_storage(url, settings)
        category = OmegaConf.select(self.config, "category.name", default=None)
        prefix = f"lorasweep-{category}" if category else "lorasweep"
        name = settings.study_name or derive_study_name(prefix, fixed, space, settings)
        sampler = build_sampler(settings, space)
        study = open_study(name, storage, settings, sampler)
        log.info("study %s in %s: %s", name, url, space.keys)
        # The report rebuilds reproduction commands from these when the results file is gone.
        study.set_user_attr("fixed_overrides", list(fixed))
        self.tracker = start_sweep_run(self.config, study, fixed)
        failed = True
        try:
            self._loop(study, storage, settings, space, fixed, adaptive)
            failed = False
        finally:
            env = run_environment(self.config.paths.project_dir)
            grid = (
                math.prod(map(len, space.grid().values())) if settings.sampler == "grid" else None
            )
            summary = summarize(study, fixed, settings.n_trials, url, env, grid)
            try:
                write_results(results_path, summary)
            except OSError as err:
                finish_sweep_run(self.tracker, summary, None, failed=True)
                raise ResultsNotWrittenError(
                    f"the results file was not written: {err}. The study {name!r} in {url} is "
                    "intact (every finished trial is kept): free some space, then run the same "
                    "command again (it resumes the study and writes the file), or read it with "
                    f"`python -m sweeper.report --study {name}`"
                ) from err
            print_summary(summary, results_path, summary["storage"] if settings.storage else None)
            finish_sweep_run(self.tracker, summary, results_path, failed=failed)
        return summary

    def _loop(self, study, storage, settings, space, fixed, adaptive) -> None:
        n_jobs = self._n_jobs(settings)
        heartbeat = settings.heartbeat_interval
        grid = isinstance(study.sampler, optuna.samplers.GridSampler)
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            counts = count_states(study)
            done = n_done(counts)
            if done >= settings.n_trials or (grid and study.sampler.is_exhausted(study)):
                return
            if self.failed_here > settings.max_failure_rate * settings.n_trials:
                raise SweepAbortedError(
                    f"{self.failed_here} trials failed in this sweep, more than "
                    f"search.max_failure_rate={settings.max_failure_rate} x "
                    f"n_trials={settings.n_trials}; see the fail_reason of each in the results"
                )
            # Without a heartbeat a dead process's RUNNING trial would never end: only then
            # are other processes' running trials not waited for.
            running = counts[TrialState.RUNNING.name] if heartbeat else 0
            room = settings.n_trials - done - running
            if room <= 0:
                time.sleep(min(heartbeat or 5, 5))  # other workers finish the last trials
                continue
            self._run_batch(study, storage, settings, space, fixed, adaptive, min(n_jobs, room))

    def _ask(self, study, storage, space, fixed, adaptive) -> tuple[optuna.Trial, list[str]]:
        trial = study.ask()
        if storage.get_heartbeat_interval():
            storage.record_heartbeat(trial._trial_id)  # stale-able from its first moment
        try:
            values = space.suggest(trial, lambda key: OmegaConf.select(self.config, key), adaptive)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"sampling: {type(exc).__name__}: {exc}")
            tell(study, trial, state=TrialState.FAIL)
            raise
        sampled = space.to_overrides(values)
        trial.set_user_attr("config_values", values)
        trial.set_user_attr("overrides", sampled)
        trial.set_user_attr("sweeper", worker_name())
        identity = [
            *job_overrides(self.tracker),  # nests the job's MLflow run under the sweep's
            f"+optuna.study={format_value(study.study_name)}",
            f"+optuna.trial_number={trial.number}",
        ]
        return trial, [*fixed, *sampled, *identity]

    def _run_batch(self, study, storage, settings, space, fixed, adaptive, size: int) -> None:
        asked = [self._ask(study, storage, space, fixed, adaptive) for _ in range(size)]
        trials = [t for t, _ in asked]
        for trial in trials:
            sampled = trial.user_attrs.get("overrides", [])
            log.info("trial %d: %s", trial.number, " ".join(sampled))
        ids = [t._trial_id for t in trials]
        try:
            with Heartbeat(storage, ids, settings.heartbeat_interval):
                returns = self.launcher.launch([o for _, o in asked], initial_job_idx=self.job_idx)
        except Exception as exc:  # noqa: BLE001 - e.g. a joblib worker killed by the OS
            returns = [exc] * len(trials)
        self.job_idx += len(trials)
        for trial, ret in zip(trials, returns, strict=True):
            try:
                self._tell(study, trial, ret)
            finally:  # the state on the trial's MLflow run, its value on the parent
                record_trial(self.tracker, study, trial.number)

    def _tell(self, study, trial: optuna.Trial, ret: JobReturn | Exception) -> None:
        try:
            if isinstance(ret, Exception):
                raise ret
            outcome = ret.return_value
        except Exception as exc:  # noqa: BLE001 - any failure is the trial's, with its reason
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            tell(study, trial, state=TrialState.FAIL)
            self.failed_here += 1
            log.warning("trial %d failed: %s", trial.number, reason)
            if isinstance(exc, MetricNotFoundError):
                raise SweepAbortedError(str(exc)) from exc
            return
        trial.set_user_attr("best_epoch", outcome["best_epoch"])
        trial.set_user_attr("pruned_at_epoch", outcome["pruned_at_epoch"])
        if outcome["state"] == "PRUNED":
            tell(study, trial, state=TrialState.PRUNED)
            log.info("trial %d pruned at epoch %d", trial.number, outcome["pruned_at_epoch"])
        else:
            tell(study, trial, outcome["values"])
            log.info(
                "trial %d: %s at epoch %d", trial.number, outcome["values"], outcome["best_epoch"]
            )

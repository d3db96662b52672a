"""The sweep: check the whole search config, then ask -> launch -> tell until the study has
``n_trials`` finished (complete or pruned) trials.

Several processes running the same command (on any machines, one storage) share the study:
each counts the trials finished or running anywhere and asks for the missing ones, the two
steps under one lock of the storage (``sweeper.ask_lock``), so together they start exactly
``n_trials``, and the storage hands every trial to exactly one of them. From the moment it
asks for its trials until they end, this process records their heartbeat; a trial whose
process died goes stale, is failed by the next process that looks (``fail_stale_trials``) and
queued again with the same parameters.

A rerun resumes the study: it first fails the trials whose process died and ends their MLflow
runs; a seeded sampler is reseeded with the number of trials already in the study (so a rerun
does not propose the earlier trials' parameters again); a proposal that repeats a finished
trial's parameters reuses that trial's result instead of training again; and a study whose
data changed since it began (the recorded data hash differs) is refused. Ctrl-C or SIGTERM
fails the running trials at once and queues them again with the same parameters.
"""

from __future__ import annotations

import logging
import math
import os
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

from sweeper.ask_lock import AskLock
from sweeper.checks import run_problems
from sweeper.devices import device_problems
from sweeper.interrupt import Interrupted
from sweeper.progress import finished_durations, progress_line
from sweeper.results import (
    RESULTS_FILE,
    print_summary,
    run_environment,
    summarize,
    write_results,
)
from sweeper.resume import check_data, reseed
from sweeper.search_config import SearchSettings, build_search_space, read_settings
from sweeper.search_space import SearchSpace, format_value
from sweeper.search_values import fixed_problems
from sweeper.slurm import cancel_jobs, jobs_of
from sweeper.storage import Heartbeat, make_storage, storage_problem, storage_url
from sweeper.study import (
    DONE,
    build_pruner,
    build_sampler,
    count_states,
    derive_study_name,
    n_done,
    open_study,
    tell,
)
from sweeper.tracking import (
    Tracker,
    close_dead_runs,
    dashboard_url,
    finish_sweep_run,
    job_overrides,
    record_trial,
    start_sweep_run,
)
from sweeper.trial import MetricNotFoundError, worker_name
from trainer.errors import ConfigError, LorasweepError
from trainer.logs import SWEEP_LOG, set_sweep_log

log = logging.getLogger("sweeper")


class SweepAbortedError(LorasweepError):
    """Too many trials failed (``search.max_failure_rate``), or the objective is misnamed."""


class ResultsNotWrittenError(Exception):
    """The results file could not be written (a full disk ...); the study itself is intact."""


class SweepRunner:
    """One sweeper process of a study. ``config`` is the composed config (fixed overrides
    applied), ``launcher`` a Hydra launcher, ``config_loader`` Hydra's (for group options)."""

    def __init__(self, config: DictConfig, launcher, config_loader):
        self.config, self.launcher, self.loader = config, launcher, config_loader
        self.job_idx = 0
        self.failed_here = 0
        self.tracker = Tracker()  # the study's MLflow parent run (set in run())
        self.study_name: str | None = None
        self.started = time.monotonic()

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
        if settings is not None:
            problems += device_problems(self.config, settings, self._n_jobs(settings))
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
        self.study_name = name
        log.info("study %s in %s: %s", name, url, space.keys)
        check_data(self.config, study, space)
        reseed(study, settings, space)
        # The report rebuilds reproduction commands from these when the results file is gone.
        study.set_user_attr("fixed_overrides", list(fixed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # before their MLflow runs are closed
        lock = AskLock(url, name)
        # One parent run per study: workers that start together would each create one.
        with lock():
            self.tracker = start_sweep_run(self.config, study, fixed)
        close_dead_runs(self.tracker, study)
        if settings.first_trial == "recipe":
            self._enqueue_recipe(study, settings, space, adaptive, lock)
        # The sweep's log file (the lines so far included), once the sweep is known to start:
        # a sweep refused by its checks leaves no folder behind.
        set_sweep_log(results_path.parent / SWEEP_LOG)
        status = "FAILED"
        try:
            self._loop(study, storage, settings, lock, (space, fixed, adaptive))
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            lock.close()
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
            print_summary(
                summary,
                results_path,
                summary["storage"] if settings.storage else None,
                dashboard_url(self.tracker),
            )
            finish_sweep_run(self.tracker, summary, results_path, status=status)
        return summary

    def _enqueue_recipe(self, study, settings, space, adaptive, lock: AskLock) -> None:
        """``search.first_trial: recipe``: a new study's first trial runs the config's own
        values of the searched keys (the experiment's recipe: a baseline the sampler's trials
        are measured against). Once per study, whatever the number of workers."""
        if settings.sampler == "grid":
            log.info("search.first_trial=recipe: the grid sampler walks its own points")
            return
        choices = self.config.hydra.runtime.choices

        def value_of(key: str) -> Any:
            return choices.get(key) if key in choices else OmegaConf.select(self.config, key)

        params, reasons = space.recipe(value_of, adaptive)
        if not params:
            log.warning("search.first_trial=recipe: not enqueued: %s", "; ".join(reasons))
            return
        with lock():
            if study.get_trials(deepcopy=False):
                return  # a resumed study, or another worker enqueued it
            study.enqueue_trial(params, user_attrs={"recipe": True})
        log.info("first trial: the config's recipe %s", params)

    def _loop(self, study, storage, settings, lock: AskLock, plan: tuple) -> None:
        n_jobs = self._n_jobs(settings)
        grid = isinstance(study.sampler, optuna.samplers.GridSampler)
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            # Counting and asking are one step for all the study's sweepers: two that counted
            # at once would both ask for the last trial.
            with lock():
                room = self._room(study, settings, grid)
                if room is None:
                    return
                trials = [study.ask() for _ in range(min(n_jobs, room))]
                for trial in trials:
                    if storage.get_heartbeat_interval():
                        storage.record_heartbeat(trial._trial_id)  # stale-able at once
            if not trials:
                time.sleep(min(settings.heartbeat_interval or 5, 5))  # others finish
                continue
            self._run_batch(study, storage, settings, trials, plan)

    def _room(self, study, settings: SearchSettings, grid: bool) -> int | None:
        """How many trials this sweeper may start now (0: wait for others), None when the
        study is done."""
        counts = count_states(study)
        done = n_done(counts)
        if done >= settings.n_trials or (grid and study.sampler.is_exhausted(study)):
            return None
        if self.failed_here > settings.max_failure_rate * settings.n_trials:
            raise SweepAbortedError(
                f"{self.failed_here} trials failed in this sweep, more than "
                f"search.max_failure_rate={settings.max_failure_rate} x "
                f"n_trials={settings.n_trials}; see the fail_reason of each in the results"
            )
        # Without a heartbeat a dead process's RUNNING trial would never end: only then are
        # other processes' running trials not waited for (nor counted).
        running = counts[TrialState.RUNNING.name] if settings.heartbeat_interval else 0
        return max(0, settings.n_trials - done - running)

    def _prepare(self, study, trial, space, fixed, adaptive) -> tuple[optuna.Trial, list[str]]:
        """The asked trial's sampled values, recorded on it, and its job's overrides."""
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

    def _reuse_duplicate(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """A proposal with the parameters of a finished trial takes that trial's result
        (training is deterministic: it would give the same) instead of training again."""
        params = trial.params
        earlier = next(
            (
                t
                for t in study.get_trials(deepcopy=False, states=DONE)
                if t.number != trial.number and t.params == params
            ),
            None,
        )
        if earlier is None:
            return False
        trial.set_user_attr("duplicate_of", earlier.number)
        for key in ("best_epoch", "pruned_at_epoch", "epoch_metrics", "best_file", "output_dir"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        if earlier.state == TrialState.COMPLETE:
            tell(study, trial, earlier.values)
        else:
            tell(study, trial, state=TrialState.PRUNED)
        log.info(
            "trial %d repeats the parameters of trial %d: its result (%s) is reused, nothing "
            "is trained",
            trial.number,
            earlier.number,
            earlier.state.name.lower(),
        )
        record_trial(self.tracker, study, trial.number)
        return True

    def _interrupted(self, study: optuna.Study, trials: list, exc: KeyboardInterrupt) -> None:
        """Ctrl-C / SIGTERM during a batch: its unfinished trials fail now (not RUNNING until
        their heartbeat goes stale) and are queued again with the same parameters."""
        name = exc.signame if isinstance(exc, Interrupted) else "SIGINT"
        stopped = []
        for trial in trials:
            stored = study._storage.get_trial(trial._trial_id)
            if stored.state.is_finished():
                continue
            stopped.append(stored.user_attrs)
            trial.set_user_attr(
                "fail_reason", f"interrupted by {name}; queued again with the same parameters"
            )
            tell(study, trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
            record_trial(self.tracker, study, trial.number)
            log.warning("trial %d interrupted by %s: failed and queued again", trial.number, name)
        cancel_jobs(jobs_of(stopped))  # hydra/launcher=submitit_slurm: the jobs still run

    def _run_batch(self, study, storage, settings, trials: list, plan: tuple) -> None:
        """Sample the asked trials, launch them, tell the study. Their heartbeat beats from
        the moment they were asked until the launch returns."""
        ids = [t._trial_id for t in trials]
        with Heartbeat(storage, ids, settings.heartbeat_interval):
            asked = [self._prepare(study, t, *plan) for t in trials]
            asked = [(t, o) for t, o in asked if not self._reuse_duplicate(study, t)]
            if not asked:
                return
            trials = [t for t, _ in asked]
            self._log_batch(study, settings, trials)
            try:
                returns = self.launcher.launch([o for _, o in asked], initial_job_idx=self.job_idx)
            except KeyboardInterrupt as exc:
                self._interrupted(study, trials, exc)
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a joblib worker killed by the OS
                returns = [exc] * len(trials)
        self.job_idx += len(trials)
        for trial, ret in zip(trials, returns, strict=True):
            try:
                self._tell(study, trial, ret)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Another sweeper failed it as stale (this process stalled past the grace
                # period) and queued its retry: the result that came too late is dropped.
                log.warning(
                    "trial %d was failed by another sweeper (no heartbeat within "
                    "search.heartbeat.grace_period) before its result arrived; its retry "
                    "runs it again",
                    trial.number,
                )
            finally:  # the state on the trial's MLflow run, its value on the parent
                record_trial(self.tracker, study, trial.number)

    def _log_batch(self, study, settings: SearchSettings, trials: list) -> None:
        done = n_done(count_states(study))
        elapsed = time.monotonic() - self.started
        durations = finished_durations(study)
        log.info("%s", progress_line(durations, done, settings.n_trials, elapsed, len(trials)))
        for k, trial in enumerate(trials, start=1):
            sampled = trial.user_attrs.get("overrides", [])
            log.info(
                "trial %d (%d of %d): %s",
                trial.number,
                done + k,
                settings.n_trials,
                " ".join(sampled),
            )

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

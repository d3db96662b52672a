"""The Optuna side of a sweep: storage, sampler, pruner, study name, and counting trials.

Both the sweeper process and every trial process build their storage here from the same
config, so a trial launched in another process (joblib, another machine) finds its study.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError

from sweeper.search_config import SearchSettings
from sweeper.search_space import SearchSpace
from trainer.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_DB = "lorasweep_optuna.db"
# Trials that count towards n_trials: a pruned trial is a finished answer too.
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# Overrides that do not change what a trial trains: left out of the derived study name.
_BOOKKEEPING = ("search.", "hydra.", "hydra/", "paths.", "optuna.")


def storage_url(settings: SearchSettings, runs_dir: str | Path) -> str:
    """``search.storage``, or the embedded default: a SQLite file in the runs folder."""
    if settings.storage:
        return settings.storage
    path = Path(runs_dir).absolute() / DEFAULT_DB
    with contextlib.suppress(OSError):  # an unwritable runs folder: storage_problem says so
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


# How long the up-front check waits for a database server (seconds): an unreachable one is a
# typo or a server that is down, found before the first trial instead of after it.
CONNECT_TIMEOUT = 5
STORAGE_ALLOWED = (
    "allowed: null (the embedded SQLite file <runs dir>/lorasweep_optuna.db) or an SQLAlchemy "
    "URL, e.g. sqlite:////abs/path/optuna.db or postgresql+psycopg://user:password@host/db"
)


def storage_problem(url: str) -> str | None:
    """Why the study storage at ``url`` cannot be used, or None; without its key, so that the
    sweep (``search.storage``) and the report (``--storage``) name theirs.

    An SQLite file must be writable, or creatable in an existing writable folder (nothing is
    created here); a database server must accept a connection within ``CONNECT_TIMEOUT`` s.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"{url!r} is not a database URL; {STORAGE_ALLOWED}"
    shown = repr(parsed.render_as_string(hide_password=True))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problem(parsed.database, shown)
    connect_args = (
        {"connect_timeout": CONNECT_TIMEOUT}
        if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb")
        else {}
    )
    try:
        engine = create_engine(parsed, connect_args=connect_args)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError, ArgumentError) as exc:
        return (
            f"{shown}: no database driver for {parsed.drivername!r} ({exc}); install it "
            "(PostgreSQL: pip install -e '.[sweep]'); " + STORAGE_ALLOWED
        )
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the user's to fix
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = reason[0].strip("'\"") if reason else repr(exc)
        return f"{shown}: cannot connect to the database: {first}"
    finally:
        engine.dispose()
    return None


def _sqlite_problem(database: str | None, shown: str) -> str | None:
    if not database or database == ":memory:":
        return (
            f"{shown}: an in-memory database lives and dies with one process; trials and "
            f"reruns could not share it; {STORAGE_ALLOWED}"
        )
    path = Path(database).expanduser()
    if path.exists():
        if not path.is_file():
            return f"{shown}: {path} is not a file"
        try:
            with open(path, "r+b"):
                pass
        except OSError as err:
            return f"{shown}: cannot write {path}: {err.strerror or err}"
        return None
    folder = path.parent
    if not folder.is_dir():
        return f"{shown}: the folder {folder} does not exist (or is not a folder); create it first"
    try:  # root may write where the mode bits say no: try, rather than os.access
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".lorasweep-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{shown}: cannot create the database in {folder}: {err.strerror or err}"
    return None


def make_storage(url: str, settings: SearchSettings | None = None) -> RDBStorage:
    """An RDB storage; with ``settings`` (the sweeper's side) it also runs the heartbeat
    bookkeeping: stale trials fail and are queued again (``heartbeat.max_retry`` times)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes share one file: wait for the write lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if settings is not None and settings.heartbeat_interval:
        kwargs = {
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=settings.max_retry
            ),
        }
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, OperationalError):
            # Workers started together race to create the schema on a new database; the
            # loser finds it made on the next attempt.
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def build_sampler(settings: SearchSettings, space: SearchSpace) -> optuna.samplers.BaseSampler:
    name, seed, args = settings.sampler, settings.sampler_seed, dict(settings.sampler_args)
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **args)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **args)
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed, **args)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **args)
        return optuna.samplers.NSGAIISampler(seed=seed, **args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.sampler.{name}: the sampler rejects {args}: {exc}") from exc


def build_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    name, args = settings.pruner, dict(settings.pruner_args)
    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    try:
        return classes[name](**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.pruner.{name}: the pruner rejects {args}: {exc}") from exc


def is_bookkeeping(override_key: str) -> bool:
    key = override_key.lstrip("+~")
    return key.startswith(_BOOKKEEPING) or key in ("search", "hydra", "paths")


def derive_study_name(
    prefix: str, fixed: Iterable[str], space: SearchSpace, settings: SearchSettings
) -> str:
    """A stable name for "this experiment": the fixed overrides that change training, the
    search space and the objectives. The same command finds the same study again; budget,
    storage and launcher overrides do not change it."""
    keep = sorted(o for o in fixed if not is_bookkeeping(o.split("=", 1)[0]))
    spec = {
        "overrides": keep,
        "space": [{**p.__dict__, "choices": p.choices and list(p.choices)} for p in space.params],
        "metrics": list(settings.metrics),
        "directions": list(settings.directions),
    }
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def open_study(
    name: str,
    storage: RDBStorage,
    settings: SearchSettings,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Create the study or load it (a rerun resumes); directions must match an existing one."""
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=build_pruner(settings),
            directions=list(settings.directions),
            load_if_exists=True,
        )
    except ValueError as exc:
        raise ConfigError(f"search.directions: study {name!r} exists with others: {exc}") from exc
    if list(study.directions) != [
        optuna.study.StudyDirection[d.upper()] for d in settings.directions
    ]:
        raise ConfigError(
            f"search.directions: study {name!r} was created with "
            f"{[d.name.lower() for d in study.directions]}, not {list(settings.directions)}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(settings.metrics))
    return study


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def n_done(counts: dict[str, int]) -> int:
    return sum(counts[state.name] for state in DONE)


def tell(study: optuna.Study, trial: optuna.Trial, values=None, state=None) -> None:
    """``study.tell``, tolerating the grid sampler's ``study.stop()`` on its last point: that
    call only works inside ``study.optimize``; the state is stored before it raises, and the
    sweep loop ends a grid by ``is_exhausted`` itself."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise

"""Where a study lives: an RDB (SQLite, PostgreSQL, MySQL, through SQLAlchemy) or Optuna's
file-based journal (``journal:///abs/path``, for a shared filesystem without a database).

Both the sweeper process and every trial process build their storage here from the same
config, so a trial launched in another process (joblib, another machine) finds its study. On
both kinds the sweeper's side runs the same heartbeat bookkeeping: a trial whose process died
fails after ``search.heartbeat.grace_period`` seconds and is queued again
(``RetryHeartbeatStaleTrialCallback``, ``heartbeat.max_retry`` times).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from sweeper.search_config import SearchSettings

log = logging.getLogger(__name__)

DEFAULT_DB = "lorasweep_optuna.db"
JOURNAL = "journal://"


def storage_url(settings: SearchSettings, runs_dir: str | Path) -> str:
    """``search.storage``, or the embedded default: a SQLite file in the runs folder."""
    if settings.storage:
        return settings.storage
    path = Path(runs_dir).absolute() / DEFAULT_DB
    with contextlib.suppress(OSError):  # an unwritable runs folder: storage_problem says so
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:///abs/path`` storage; None for any other URL."""
    return Path(url.removeprefix(JOURNAL)) if url.startswith(JOURNAL) else None


# How long the up-front check waits for a database server (seconds): an unreachable one is a
# typo or a server that is down, found before the first trial instead of after it.
CONNECT_TIMEOUT = 5
STORAGE_ALLOWED = (
    "allowed: null (the embedded SQLite file <runs dir>/lorasweep_optuna.db), an SQLAlchemy "
    "URL, e.g. sqlite:////abs/path/optuna.db or postgresql+psycopg://user:password@host/db, "
    "or an Optuna journal file on a shared filesystem, journal:///abs/path/optuna.journal"
)


def storage_problem(url: str) -> str | None:
    """Why the study storage at ``url`` cannot be used, or None; without its key, so that the
    sweep (``search.storage``) and the report (``--storage``) name theirs.

    An SQLite or journal file must be writable, or creatable in an existing writable folder
    (nothing is created here); a database server must accept a connection within
    ``CONNECT_TIMEOUT`` s.
    """
    journal = journal_path(url)
    if journal is not None:
        if not journal.is_absolute():
            return (
                f"{url!r}: a journal file needs an absolute path (three slashes: "
                f"journal:///shared/optuna.journal), got {str(journal)!r}"
            )
        return _file_problem(journal, repr(url), "journal")
    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"{url!r} is not a database URL; {STORAGE_ALLOWED}"
    shown = repr(parsed.render_as_string(hide_password=True))
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            return (
                f"{shown}: an in-memory database lives and dies with one process; trials and "
                f"reruns could not share it; {STORAGE_ALLOWED}"
            )
        return _file_problem(Path(database).expanduser(), shown, "database")
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


def _file_problem(path: Path, shown: str, what: str) -> str | None:
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
        return f"{shown}: cannot create the {what} in {folder}: {err.strerror or err}"
    return None


# The heartbeat of a journal trial: a system attribute [trial id, unix time]. The trial id is
# part of it because Optuna's retry callback copies a stale trial's system attributes into its
# queued copy: that copy must not look stale the moment it is taken.
HEARTBEAT_ATTR = "lorasweep:heartbeat"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat interface its RDB storage has, so that
    ``optuna.storages.fail_stale_trials`` and ``RetryHeartbeatStaleTrialCallback`` work on it
    unchanged. A beat is a system attribute (one journal line per running trial per interval);
    staleness is judged on the reader's clock, so the machines' clocks must agree to within the
    grace period (NTP)."""

    def __init__(
        self,
        backend: JournalFileBackend,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        if self.get_trial(trial_id).state.is_finished():
            return  # a trial told while its batch still beats (a reused duplicate)
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, [trial_id, time.time()])

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat and beat[0] == trial._trial_id and now - beat[1] > grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback


class Heartbeat:
    """Records a heartbeat for the given trials every ``interval`` s while a batch runs (from
    the moment they were asked: a trial that waits to be launched must not go stale)."""

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


def make_storage(url: str, settings: SearchSettings | None = None) -> BaseStorage:
    """The storage at ``url``; with ``settings`` (the sweeper's side) it also runs the
    heartbeat bookkeeping: stale trials fail and are queued again (``heartbeat.max_retry``
    times)."""
    heartbeat: dict[str, Any] = {}
    if settings is not None and settings.heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": settings.heartbeat_interval,
            "grace_period": settings.grace_period,
        }
        retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)
    journal = journal_path(url)
    if journal is not None:
        if heartbeat:
            heartbeat["stale_trial_callback"] = retry
        # The backend's default lock (a symlink) works on NFS too.
        return HeartbeatJournalStorage(JournalFileBackend(str(journal)), **heartbeat)
    if heartbeat:
        heartbeat["heartbeat_stale_trial_callback"] = retry
    return _rdb_storage(url, heartbeat)


def _rdb_storage(url: str, heartbeat: dict[str, Any]) -> RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes share one file: wait for the write lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (IntegrityError, OperationalError, ProgrammingError):
            # Workers started together race to create the schema on a new database; the
            # loser finds it made on the next attempt. PostgreSQL reports the lost race as
            # DuplicateTable (a ProgrammingError), SQLite as an OperationalError.
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")

"""One sweeper at a time counts a study's trials and asks for new ones.

Several sweepers on one study (``search.storage`` shared by machines, or several commands on one
machine) each count the trials finished or running and ask for as many as are missing. Counting
and asking are two storage calls: two sweepers that count at the same moment both see room for
the last trial and both ask (5 trials for ``n_trials=4``). Holding a lock of the storage itself
around the two makes them one step:

- PostgreSQL: a session advisory lock (``pg_advisory_lock``) keyed by the study's name; MySQL /
  MariaDB: ``GET_LOCK``. The server releases either when the holding connection drops, so a
  killed sweeper never leaves it held.
- SQLite (a file on one machine): an exclusive ``flock`` on ``<db>.ask``, which the kernel
  releases when the holding process dies.
- Journal file (a shared filesystem, NFS included): Optuna's own journal lock
  (``JournalFileSymlinkLock``) on ``<journal>.ask``, broken after ``GRACE`` s if its holder died.

Other SQLAlchemy dialects are used without the lock (a warning says so).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from sweeper.storage import journal_path

log = logging.getLogger(__name__)

# A journal lock older than this is taken to belong to a dead sweeper. Counting and asking take
# well under a second; a live holder never comes near it.
GRACE = 30


def _key(study_name: str) -> int:
    """A signed 64-bit advisory-lock key for the study."""
    digest = hashlib.sha1(f"lorasweep-ask:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), released on exit or when the
    process dies."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AskLock:
    """``with AskLock(url, study_name)():`` count the trials and ask, alone on the study."""

    def __init__(self, url: str, study_name: str):
        self.url, self.study_name = url, study_name
        self._engine = None
        journal = journal_path(url)
        self.kind = "journal" if journal is not None else make_url(url).get_backend_name()
        if self.kind not in ("journal", "sqlite", "postgresql", "mysql", "mariadb"):
            log.warning(
                "search.storage: no lock for %s databases: several sweepers on this study may "
                "together start more than search.n_trials trials",
                self.kind,
            )

    def __call__(self) -> contextlib.AbstractContextManager[None]:
        if self.kind == "journal":
            path = journal_path(self.url)
            lock = JournalFileSymlinkLock(f"{path}.ask", grace_period=GRACE)
            return _optuna_lock(lock)
        if self.kind == "sqlite":
            return flocked(Path(f"{make_url(self.url).database}.ask"))
        if self.kind in ("postgresql", "mysql", "mariadb"):
            return self._server_lock()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _server_lock(self) -> Iterator[None]:
        if self._engine is None:
            # One connection per hold, none pooled: a dropped one cannot keep the lock.
            self._engine = create_engine(self.url, poolclass=NullPool)
        if self.kind == "postgresql":
            lock, unlock = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
            params = {"k": _key(self.study_name)}
        else:
            lock, unlock = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
            params = {"k": f"lorasweep-ask-{_key(self.study_name):x}"[:64]}
        with self._engine.connect() as connection:
            connection.execute(text(lock), params)
            connection.commit()
            try:
                yield
            finally:
                try:
                    connection.execute(text(unlock), params)
                    connection.commit()
                except Exception as exc:  # noqa: BLE001 - the server frees it with the session
                    log.warning("search.storage: releasing the study lock failed: %s", exc)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@contextlib.contextmanager
def _optuna_lock(lock: JournalFileSymlinkLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()

"""The study lock that makes counting and asking one step (``sweeper.ask_lock``): held by one
process at a time, per study, and freed when its holder is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sweeper.ask_lock import AskLock

# The PostgreSQL cases start a server (conftest.postgres).
PG = [pytest.mark.postgres, pytest.mark.slow]

HOLD = """
import sys, time
from sweeper.ask_lock import AskLock
with AskLock(sys.argv[1], sys.argv[2])():
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(url: str, study: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, study, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _wait_for_lock(url: str, study: str) -> float:
    started = time.monotonic()
    lock = AskLock(url, study)
    with lock():
        waited = time.monotonic() - started
    lock.close()
    return waited


def _url(kind: str, tmp_path, postgres=None) -> str:
    if kind == "journal":
        return f"journal://{tmp_path / 'optuna.journal'}"
    if kind == "postgresql":
        return postgres.database("ask_lock")
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.fixture(params=["sqlite", "journal", pytest.param("postgresql", marks=PG)])
def url(request, tmp_path):
    postgres = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return _url(request.param, tmp_path, postgres)


def test_one_holder_at_a_time(url):
    holder = _holder(url, "study-a", 1.5)
    assert _wait_for_lock(url, "study-a") >= 1.0  # waited for the holder to let go
    assert holder.wait(timeout=30) == 0
    assert _wait_for_lock(url, "study-a") < 1.0  # free again


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=PG)])
def test_a_killed_holder_frees_the_lock_at_once(kind, tmp_path, request):
    # (A journal lock left by a dead process is broken after ask_lock.GRACE s instead.)
    postgres = request.getfixturevalue("postgres") if kind == "postgresql" else None
    url = _url(kind, tmp_path, postgres)
    holder = _holder(url, "study-a", 60)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert _wait_for_lock(url, "study-a") < 5.0


@pytest.mark.postgres
@pytest.mark.slow
def test_postgresql_locks_each_study_apart(tmp_path, postgres):
    url = _url("postgresql", tmp_path, postgres)
    holder = _holder(url, "study-a", 3)
    assert _wait_for_lock(url, "study-b") < 1.0  # another study's sweepers are not held up
    holder.wait(timeout=30)

"""Scale-out: several workers on one study start exactly ``search.n_trials`` trials, on every
storage kind (SQLite, Optuna's journal file, PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from sweep_helpers import (
    assert_shared_without_duplicates,
    default_storage,
    make_dataset,
    run_workers,
    sweep_env,
    tiny_overrides,
    trials_of,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_data")
    return make_dataset(root), root / "cache"


def _four_workers(shared, tmp_path, storage: str | None) -> tuple[list, list[str], float]:
    data_dir, cache = shared
    env = sweep_env(tmp_path, cache)
    # Every worker pauses between counting and asking (tests/sweep/delayed_count.py) and asks
    # for two trials at a time: without the storage lock around the two steps, workers that
    # count at once each see room for two and ask, and the study gets 6 to 8 trials for 4.
    env["DELAYED_COUNT_SECONDS"] = "1"
    # ... and they all start asking together (under load, the first worker up could otherwise
    # take every trial before the others have imported torch: one worker, no race tested).
    env["DELAYED_COUNT_BARRIER"] = str(tmp_path / "barrier")
    env["DELAYED_COUNT_WORKERS"] = "4"
    # Four processes on two cores: a heartbeat may come late; a trial failed as stale would be
    # retried under another number (nothing here kills a worker, so no grace period is tested).
    overrides = [
        "search.heartbeat.grace_period=20" if o.startswith("search.heartbeat.grace_period=") else o
        for o in tiny_overrides(data_dir, tmp_path / "sweep", epochs=1)
    ]
    args = [
        *overrides,
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=4",
        "search.n_jobs=2",
    ]
    if storage:
        args.append(f"search.storage='{storage}'")
    started = time.monotonic()
    texts = run_workers(args, env, tmp_path, n=4, module="delayed_count")
    seconds = time.monotonic() - started
    return trials_of(storage or default_storage(tmp_path)), texts, seconds


def _exactly_four(trials, texts) -> None:
    # No fifth trial in any state (a surplus one failed or pruned would be one too many).
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], [
        (t.number, t.state.name) for t in trials
    ]
    assert_shared_without_duplicates(trials, texts, 4, all_take_part=False)
    # Each trial trained once: one trial folder per trial, none started twice.
    for text in texts:
        assert text.count("Traceback") == 0


def test_four_workers_on_sqlite_start_exactly_n_trials(shared, tmp_path):
    trials, texts, _ = _four_workers(shared, tmp_path, None)
    _exactly_four(trials, texts)


def test_four_workers_on_a_journal_file_start_exactly_n_trials(shared, tmp_path):
    url = f"journal://{tmp_path / 'optuna.journal'}"
    trials, texts, _ = _four_workers(shared, tmp_path, url)
    _exactly_four(trials, texts)
    assert not (tmp_path / "runs" / "lorasweep_optuna.db").exists()  # all in the journal


@pytest.mark.postgres
def test_four_workers_on_postgresql_start_exactly_n_trials(shared, tmp_path, postgres):
    url = postgres.database("exact_n")
    trials, texts, _ = _four_workers(shared, tmp_path, url)
    _exactly_four(trials, texts)

"""Two workers sharing one study on a real PostgreSQL server (``conftest.postgres``)."""

from __future__ import annotations

import pytest
from sweep_helpers import (
    assert_shared_without_duplicates,
    make_dataset,
    run_two_workers,
    sweep_env,
    tiny_overrides,
    trials_of,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def postgres_url(postgres):
    return postgres.database("optuna")


def test_two_workers_share_one_study_on_postgresql(postgres_url, tmp_path):
    data_dir = make_dataset(tmp_path)
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=1),
        f"search.storage='{postgres_url}'",
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=4",
    ]
    texts = run_two_workers(args, sweep_env(tmp_path, tmp_path / "cache"), tmp_path)
    assert not (tmp_path / "runs" / "lorasweep_optuna.db").exists()  # all in PostgreSQL
    assert_shared_without_duplicates(trials_of(postgres_url), texts, 4)


def _open_storage(url, barrier, queue):
    from sweeper.storage import make_storage

    barrier.wait()
    try:
        make_storage(url)
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(exc).__name__}: {exc}"[:300])


def test_workers_opening_a_new_database_together_all_get_the_storage(postgres):
    """Workers started at once on an empty database race to create Optuna's tables; the losers
    (PostgreSQL says ``DuplicateTable`` or a unique violation) must retry, not fail. Separate
    processes, as the sweeper's workers are (threads of one process do not race here)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    n = 6
    for _ in range(4):  # a fresh database each round: the race is on the first create
        url = postgres.database("race")
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_open_storage, args=(url, barrier, queue)) for _ in range(n)]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert results == ["ok"] * n

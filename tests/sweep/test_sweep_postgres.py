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

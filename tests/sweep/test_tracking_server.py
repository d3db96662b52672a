"""Two workers log one sweep into a real MLflow tracking server (``mlflow server`` on
127.0.0.1, its backend store in PostgreSQL, artifacts served by the server from a local
folder): one parent run, one child per trial, no duplicates, every artifact readable back
through the server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from sqlalchemy import create_engine, text
from sweep_helpers import (
    assert_shared_without_duplicates,
    default_storage,
    make_dataset,
    run_two_workers,
    sweep_env,
    tiny_overrides,
    trials_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    backend = postgres.database("mlflow")
    port = _free_port()
    log = open(tmp_path / "mlflow_server.log", "w")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri", backend,
            "--artifacts-destination", str(tmp_path / "served_artifacts"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "mlflow_server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.5)
        yield url, backend, tmp_path / "served_artifacts"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_two_workers_log_one_sweep_into_a_tracking_server(mlflow_server, tmp_path):
    url, backend, served = mlflow_server
    data_dir = make_dataset(tmp_path)
    env = sweep_env(tmp_path, tmp_path / "cache")
    env.pop("LORASWEEP_MLRUNS_DIR", None)
    args = [
        *tiny_overrides(data_dir, tmp_path / "sweep", epochs=1),
        f"tracking.uri={url}",
        "search.sampler.name=random",
        "search.pruner.name=none",
        "search.n_trials=4",
    ]
    texts = run_two_workers(args, env, tmp_path)
    trials = trials_of(default_storage(tmp_path))
    assert_shared_without_duplicates(trials, texts, 4)

    client = MlflowClient(tracking_uri=url)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1  # one experiment: the study's
    runs = client.search_runs([experiments[0].experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    print(f"tracking server runs: {len(parents)} parent, {len(children)} children")
    assert len(parents) == 1 and parents[0].data.tags["lorasweep.role"] == "sweep"
    parent = parents[0].info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent}
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [0, 1, 2, 3]  # one child per trial, none twice
    assert {r.info.status for r in runs} == {"FINISHED"}
    # Both workers' trials, logged from both processes, under the one parent.
    workers = {t.number: t.user_attrs["job_worker"] for t in trials}
    assert len(set(workers.values())) == 2

    # Artifacts go through the server (mlflow-artifacts:/) and read back through it.
    for run in children:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        number = int(run.data.tags["optuna.trial_number"])
        config = yaml.safe_load(
            Path(client.download_artifacts(run.info.run_id, "config/resolved_config.yaml",
                                           str(tmp_path / f"dl_{number}"))).read_text()
        )  # fmt: skip
        assert config["optuna"]["trial_number"] == number
        lora = client.list_artifacts(run.info.run_id, "lora")
        assert [f.path for f in lora] and all(f.file_size > 0 for f in lora)
    assert any(served.rglob("resolved_config.yaml"))  # stored where the server keeps them
    # The server's backend store is the PostgreSQL database: five runs in its table.
    engine = create_engine(backend)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 5
    engine.dispose()

"""Storages and output files that cannot work are refused before anything runs: one line per
problem naming the key (or option) and the value, exit status 2, no traceback, nothing
trained or written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sweep_helpers import PROJECT_DIR, make_dataset, run_sweep, sweep_env, tiny_overrides

from sweeper.report.__main__ import main as report_main
from sweeper.storage import storage_problem

CLOSED_PORT = "postgresql+psycopg://u:secret@127.0.0.1:1/db"


def test_garbage_is_not_a_database_url():
    problem = storage_problem("notaurl")
    assert "'notaurl' is not a database URL" in problem
    assert "sqlite:////abs/path/optuna.db" in problem  # what is allowed


def test_a_closed_port_is_refused_quickly_without_the_password():
    problem = storage_problem(CLOSED_PORT)
    assert "cannot connect to the database" in problem
    assert "127.0.0.1:1" in problem and "secret" not in problem


def test_sqlite_needs_an_existing_writable_folder(tmp_path):
    assert storage_problem(f"sqlite:///{tmp_path / 'ok.db'}") is None
    assert not (tmp_path / "ok.db").exists()  # checking creates nothing
    missing = storage_problem(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")
    assert f"the folder {tmp_path / 'no' / 'such'} does not exist" in missing
    (tmp_path / "plain").write_text("a file, not a folder")
    assert "does not exist (or is not a folder)" in storage_problem(
        f"sqlite:///{tmp_path / 'plain' / 'x.db'}"
    )
    assert "in-memory" in storage_problem("sqlite://")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc is read-only on Linux")
def test_sqlite_in_a_read_only_folder():
    assert "cannot create the database in /proc" in storage_problem("sqlite:////proc/x.db")


def test_sweep_refuses_bad_storages_before_any_trial(tmp_path):
    sweep_dir = tmp_path / "sweep"
    data_dir = make_dataset(tmp_path)
    env = sweep_env(tmp_path, tmp_path / "cache")
    proc = run_sweep(
        [*tiny_overrides(data_dir, sweep_dir), f"search.storage='{CLOSED_PORT}'"], env, 120
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if "search.storage" in ln)
    assert "postgresql+psycopg://u:***@127.0.0.1:1/db" in line and "cannot connect" in line
    assert not (sweep_dir / "optuna_results.yaml").exists()
    assert not list(sweep_dir.glob("trial_*"))


def test_report_refuses_a_garbage_storage(capsys):
    assert report_main(["--storage", "notaurl"]) == 2
    err = capsys.readouterr().err
    assert "--storage: 'notaurl' is not a database URL" in err
    assert "Traceback" not in err


def test_report_refuses_an_unwritable_out_before_reading_the_storage(tmp_path, capsys):
    (tmp_path / "plain").write_text("a file, not a folder")
    out = tmp_path / "plain" / "report.html"
    # The storage does not exist either: --out is checked first, so that is not what is said.
    assert report_main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out '{out}': cannot create {out.parent}: {out.parent} is not a folder" in err
    assert report_main(["--storage", "notaurl", "--out", "/proc/report.html"]) == 2
    assert "--out '/proc/report.html': cannot write in /proc" in capsys.readouterr().err


def test_report_cli_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sweeper.report", "--storage", CLOSED_PORT],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cannot connect" in proc.stderr

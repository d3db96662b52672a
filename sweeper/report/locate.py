"""Which study the report is about, in which storage, and where the report goes.

Defaults follow the sweeper's own: the storage is ``<runs dir>/lorasweep_optuna.db`` (the runs
dir is ``$LORASWEEP_RUNS_DIR``, else ``<project>/runs`` with the project dir
``$LORASWEEP_PROJECT_DIR`` or the current directory), and the study is the storage's most
recently active one (the one whose latest trial started last): the last sweep's.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import optuna

from sweeper.storage import DEFAULT_DB, journal_path, make_storage, storage_problem
from trainer.atomic_write import output_problem
from trainer.errors import LorasweepError


class ReportInputError(LorasweepError):
    """The storage or the study the report should read does not exist or is empty."""


def runs_dir() -> Path:
    if os.environ.get("LORASWEEP_RUNS_DIR"):
        return Path(os.environ["LORASWEEP_RUNS_DIR"]).absolute()
    project = os.environ.get("LORASWEEP_PROJECT_DIR") or os.getcwd()
    return Path(project).absolute() / "runs"


def default_storage() -> str:
    return f"sqlite:///{runs_dir() / DEFAULT_DB}"


def _store_file(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return journal_path(url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage at ``url``; an SQLite or journal file must exist (creating an empty one
    helps no one)."""
    path = _store_file(url)
    if path is not None and not path.is_file():
        raise ReportInputError(
            f"--storage {url}: no such file; run a sweep first (python -m sweeper -m) or give "
            "the storage of one (search.storage, or the sweep's results file's `storage`)"
        )
    problem = storage_problem(url)
    if problem:
        raise ReportInputError(f"--storage: {problem}")
    return make_storage(url)


def check_output(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written before the report is gathered."""
    problem = output_problem(out)
    if problem:
        raise ReportInputError(f"--out {str(out)!r}: {problem}")


def latest_study(storage: optuna.storages.BaseStorage) -> str:
    """The study whose latest trial started last (the last sweep's)."""
    newest: tuple[datetime, str] | None = None
    for study in storage.get_all_studies():
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        starts = [t.datetime_start for t in trials if t.datetime_start is not None]
        if starts and (newest is None or max(starts) > newest[0]):
            newest = (max(starts), study.study_name)
    if newest is None:
        raise ReportInputError("the storage has no study with a trial; run a sweep first")
    return newest[1]


def check_study(storage: optuna.storages.BaseStorage, name: str) -> None:
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        raise ReportInputError(f"--study {name!r}: not in the storage; it has {sorted(names)}")


def default_output(study_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name)
    return runs_dir() / "reports" / f"{safe}.html"

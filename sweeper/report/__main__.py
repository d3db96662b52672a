"""``python -m sweeper.report [--study NAME] [--storage URL] [--out FILE]``.

Writes the report of a study (default: the storage's most recently active one, i.e. the last
sweep's), logs it on the study's MLflow parent run when there is one, and prints its path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import optuna

from sweeper.report.gather import gather
from sweeper.report.locate import (
    check_output,
    check_study,
    default_output,
    default_storage,
    latest_study,
    open_storage,
)
from sweeper.report.render import write_report
from sweeper.tracking.runs import STUDY_ATTR_PARENT, STUDY_ATTR_URI
from trainer.errors import LorasweepError
from trainer.logs import setup_logging

log = logging.getLogger("sweeper.report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sweeper.report", description=__doc__)
    parser.add_argument("--study", help="study name (default: the most recently active one)")
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: sqlite:///<runs dir>/lorasweep_optuna.db)"
    )
    parser.add_argument("--out", type=Path, help="HTML file (default: <runs dir>/reports/)")
    parser.add_argument(
        "--tracking-uri", help="MLflow store to read (default: the one the sweep recorded)"
    )
    parser.add_argument(
        "--no-log", action="store_true", help="do not log the report on the MLflow parent run"
    )
    return parser.parse_args(argv)


def _reader(uri: str | None):
    if not uri:
        return None
    from sweeper.tracking.reader import RunReader

    try:
        return RunReader(uri)
    except Exception as exc:  # noqa: BLE001 - the report still works from the trial folders
        log.warning("report: MLflow store %s unreadable: %s", uri, exc)
        return None


def make_report(args: argparse.Namespace) -> Path:
    storage_url = args.storage or default_storage()
    if args.out is not None:
        check_output(args.out)
    storage = open_storage(storage_url)
    name = args.study or latest_study(storage)
    check_study(storage, name)
    if args.out is None:
        check_output(default_output(name))
    study = optuna.load_study(study_name=name, storage=storage)
    reader = _reader(args.tracking_uri or study.user_attrs.get(STUDY_ATTR_URI))
    with tempfile.TemporaryDirectory(prefix="lorasweep-report-") as scratch:
        data = gather(study, storage_url, reader, Path(scratch))
    out = write_report(data, args.out or default_output(name))
    parent = study.user_attrs.get(STUDY_ATTR_PARENT)
    logged = reader is not None and parent and not args.no_log
    if logged and reader.log_artifact(parent, out, "report"):
        print(f"Logged on MLflow run {parent} (artifact report/{out.name}).")
    return out


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = parse_args(argv)
    try:
        out = make_report(args)
    except LorasweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, permissions: the previous report is unchanged
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Report: {out.absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

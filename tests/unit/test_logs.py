"""Quiet terminals, complete log files (trainer/logs.py): what the terminal filter lets
through, the sweep's own log file, and the libraries' own handlers routed into logging."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest

import trainer.logs as logs
from trainer.logs import SweepLogHandler, TerminalFilter, printed_to_log, route_library_logs


def _record(name: str, level: int = logging.INFO, msg: str = "text", args=(), **extra):
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    ("name", "level", "extra", "shown"),
    [
        ("sweeper.sweep_loop", logging.INFO, {}, True),
        ("trainer.loop.train", logging.WARNING, {}, True),
        ("evaluators.callback", logging.INFO, {"terminal": False}, False),
        ("evaluators.callback", logging.ERROR, {"terminal": False}, True),
        ("bitsandbytes.cextension", logging.WARNING, {}, False),
        ("transformers.image_processing_utils", logging.WARNING, {}, False),
        ("hydra._internal.core_plugins.basic_launcher", logging.INFO, {}, False),
        ("LyCORIS", logging.WARNING, {}, False),
        ("root", logging.WARNING, {}, False),
        ("diffusers.models", logging.ERROR, {}, True),
    ],
)
def test_the_terminal_shows_the_projects_lines_and_every_error(name, level, extra, shown):
    before = logs.hidden_count()
    assert TerminalFilter().filter(_record(name, level, **extra)) is shown
    assert logs.hidden_count() == before + (0 if shown else 1)


def test_a_captured_warning_is_shown_only_when_raised_from_the_project():
    own = str(Path(logs.__file__)) + ":12: UserWarning: ours\n"
    library = "/usr/lib/python3/site-packages/prodigyopt/prodigy.py:78: UserWarning: theirs\n"
    terminal = TerminalFilter()
    assert terminal.filter(_record("py.warnings", logging.WARNING, "%s", (own,)))
    assert not terminal.filter(_record("py.warnings", logging.WARNING, "%s", (library,)))


@pytest.fixture
def sweep_log_state():
    saved = (SweepLogHandler._path, SweepLogHandler._pending)
    SweepLogHandler._path, SweepLogHandler._pending = None, []
    yield
    SweepLogHandler._path, SweepLogHandler._pending = saved


def test_the_sweep_log_keeps_the_lines_before_and_after_the_sweep_names_it(
    tmp_path, sweep_log_state
):
    early = SweepLogHandler()
    early.handle(_record("hydra._internal.utils", msg="before the sweep"))
    path = tmp_path / "sweep" / "sweep.log"
    logs.set_sweep_log(path)
    # Hydra rebuilds its handlers around every launch: a new handler writes to the same file.
    SweepLogHandler().handle(
        _record("hydra._internal.core_plugins.basic_launcher", msg="#0 : a=1")
    )
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("[hydra._internal.utils][INFO] - before the sweep")
    assert lines[1].endswith("- #0 : a=1")


def test_a_process_that_starts_no_sweep_writes_no_sweep_log(tmp_path, sweep_log_state):
    handler = SweepLogHandler(buffer=3)
    for k in range(10):
        handler.handle(_record("sweeper", msg=f"line {k}"))
    assert len(SweepLogHandler._pending) == 3  # bounded, and no file anywhere
    assert list(tmp_path.iterdir()) == []


def test_printed_lines_become_log_file_records(caplog):
    log = logging.getLogger("trainer.optim.optimizers")
    with caplog.at_level(logging.INFO, logger=log.name), printed_to_log(log):
        print("Using decoupled weight decay")
        print("")
    (record,) = [r for r in caplog.records if r.name == log.name]
    assert record.getMessage() == "Using decoupled weight decay"
    assert record.terminal is False
    assert not TerminalFilter().filter(record)


def test_an_optimizer_that_prints_says_it_in_the_log_not_on_stdout(capsys, caplog):
    pytest.importorskip("prodigyopt")
    import torch

    from trainer.optim.optimizers import build_optimizer, optimizer_config_problems
    from trainer.settings.optimizer import read_optimizer

    opt = read_optimizer(
        {"name": "Prodigy", "lr": 1.0, "args": {"decouple": True, "weight_decay": 0.01}}
    )
    param = torch.nn.Parameter(torch.zeros(2))
    with caplog.at_level(logging.INFO, logger="trainer.optim.optimizers"):
        assert optimizer_config_problems(opt) == []
        build_optimizer(opt, [param], [])
    assert "decoupled" not in capsys.readouterr().out
    quiet = [r for r in caplog.records if getattr(r, "terminal", True) is False]
    assert [r.getMessage() for r in quiet] == ["Using decoupled weight decay"]


@pytest.fixture
def routed():
    """setup_logging's routing, undone afterwards (the test process keeps its own)."""
    import transformers.utils.logging as tlog

    with warnings.catch_warnings():
        logs.setup_logging(None)
        yield tlog
    logging.captureWarnings(False)
    logs._route_libraries = False
    tlog.enable_default_handler()
    tlog.disable_propagation()
    tlog.enable_progress_bar()


def test_transformers_logs_reach_the_entry_points_handlers(routed):
    tlog = routed
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        route_library_logs()  # idempotent
        assert logging.getLogger("transformers").handlers == []
        tlog.get_logger("transformers.image_processing_utils").warning("falls back to PIL")
        assert not tlog.is_progress_bar_enabled()
    finally:
        root.removeHandler(handler)
    assert "falls back to PIL" in stream.getvalue()


def test_lycoris_lines_go_through_logging_without_colour_codes(routed):
    pytest.importorskip("lycoris")
    import lycoris  # noqa: F401 - its import adds a coloured stdout handler

    route_library_logs()
    lycoris_logger = logging.getLogger("LyCORIS")
    assert lycoris_logger.handlers == [] and lycoris_logger.propagate
    assert lycoris_logger.level == logging.WARNING


def test_mlflow_notices_go_through_logging(routed):
    import mlflow  # noqa: F401 - its import gives the "mlflow" logger a handler of its own

    route_library_logs()
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        assert logger.handlers == [] and logger.propagate, name
    record = _record("mlflow.store.db.utils", msg="Creating initial MLflow database tables...")
    assert not TerminalFilter().filter(record)

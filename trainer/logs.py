"""Process-wide logging and warning settings, made once by each entry point (``python -m
sweeper``, ``-m evaluators``, ``-m bench``, ``-m trainer.tools``, ``-m sweeper.report``) and
never as a side effect of importing a module, so a program that imports the packages keeps its
own settings.

Quiet by default: the terminal shows the project's own lines and every error; the libraries'
warnings and notices (bitsandbytes' kernels, transformers' torchvision fallbacks, Prodigy's
prints, LyCORIS's coloured lines, Hydra's per-job override list) and the project's repeated
per-epoch notes go to the log files only: each run's (each trial's) ``run.log``
(``hydra/job_logging``) and a sweep's ``sweep.log`` in its folder (``hydra/hydra_logging``,
:class:`SweepLogHandler`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import warnings
from pathlib import Path

SWEEP_LOG = "sweep.log"  # in a sweep's folder (conf/hydra/hydra_logging/lorasweep.yaml)
RUN_LOG = "run.log"  # in each run's / trial's folder (conf/hydra/job_logging/lorasweep.yaml)
FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

# Loggers whose INFO lines are the project's own (these and their children).
OWN_LOGGERS = (
    "sweeper",
    "trainer",
    "evaluators",
    "bench",
    "world",
    "hydra_plugins.lorasweep_optuna",
)
# Source folders whose Python warnings are the project's own (a captured warning's path).
_PROJECT_DIRS = tuple(
    str(Path(__file__).resolve().parents[1].joinpath(*p.split("."))) + "/" for p in OWN_LOGGERS
)

# The entry point asked for the libraries' own handlers to be routed into logging.
_route_libraries = False
_hidden = 0  # records the terminal filter kept off the terminal (they are in the log files)
_lock = threading.Lock()


def setup_logging(level: int | None = logging.WARNING) -> None:
    """Configure this process's logging and silence the libraries' known noise.

    ``level``: the root logger's level, with a stderr handler in :data:`FORMAT`
    (``logging.basicConfig``); None leaves the handlers alone (``python -m sweeper``: Hydra
    sets up the handlers from ``hydra/job_logging`` and ``hydra/hydra_logging``, whose console
    handlers carry :class:`TerminalFilter`). Whatever the level:

    * Python warnings become log records (``py.warnings``), so a library's warning goes where
      its log lines go;
    * the libraries that print through handlers of their own (transformers, diffusers,
      LyCORIS) are routed into logging by :func:`route_library_logs`, called here and by the
      code that imports them;
    * Optuna's ``ExperimentalWarning`` for the APIs the sweep uses on purpose (ask/tell with a
      heartbeat, metric names), matched by its message so Optuna is not imported here, and its
      warning that a storage heartbeat is meant for ``optimize`` (the sweep beats for its own
      trials) are dropped.
    """
    global _route_libraries
    if level is not None:
        logging.basicConfig(level=level, format=FORMAT)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from v")
    warnings.filterwarnings("ignore", message=r"Argument ``\w+`` is an experimental feature")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    _route_libraries = True
    route_library_logs()


def route_library_logs() -> None:
    """Send the libraries' own log handlers into logging, where the entry point's handlers
    (and :class:`TerminalFilter`) decide: transformers' and diffusers' ``[library]`` stderr
    handlers, MLflow's (its database set-up notices), LyCORIS's ANSI-coloured stdout handler
    (its INFO line per wrapped module is dropped), transformers' weight-loading progress bars.
    Only for an entry point that called :func:`setup_logging`; a library imported later is
    routed when the code that imports it calls this again (idempotent, cheap)."""
    if not _route_libraries:
        return
    for name in ("transformers", "diffusers"):
        library = sys.modules.get(f"{name}.utils.logging")
        if library is not None:
            library.get_logger()  # creates the library's handler if it has not yet
            _propagate(name)
            if name == "transformers":
                library.disable_progress_bar()
    if "mlflow" in sys.modules:  # its own stderr handler on these (mlflow's logging_utils)
        _propagate("mlflow", "alembic")
    if "lycoris" in sys.modules:
        _propagate("LyCORIS")
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)


def _propagate(*names: str) -> None:
    """These loggers lose their own handlers and pass their records up to the root's."""
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


@contextlib.contextmanager
def printed_to_log(logger: logging.Logger):
    """Lines a library ``print``s inside the block (Prodigy's "Using decoupled weight decay")
    become INFO records of ``logger`` marked for the log file only."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        if line.strip():
            logger.info("%s", line.strip(), extra={"terminal": False})


class TerminalFilter(logging.Filter):
    """What a terminal handler shows: every ERROR; the project's own records (its loggers,
    and warnings raised from its source) unless marked ``extra={"terminal": False}``;
    nothing else. The file handlers beside it keep every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        shown = getattr(record, "terminal", True) is not False and _is_own(record)
        if not shown:
            global _hidden
            with _lock:
                _hidden += 1
        return shown


def _is_own(record: logging.LogRecord) -> bool:
    if record.name == "py.warnings":  # a captured warning: its text starts with its file
        return str(record.args[0] if record.args else record.msg).startswith(_PROJECT_DIRS)
    return any(record.name == own or record.name.startswith(own + ".") for own in OWN_LOGGERS)


def hidden_count() -> int:
    """How many records :class:`TerminalFilter` has kept off this process's terminal."""
    return _hidden


class SweepLogHandler(logging.Handler):
    """The sweep's own log file (``<sweep dir>/sweep.log``), for ``hydra/hydra_logging``.

    Hydra builds its handlers before the sweep knows its folder and rebuilds them around every
    launch, so the file is named by :func:`set_sweep_log` (the sweeper, when it starts) and
    kept here; records before that wait in memory (at most ``buffer`` of them), and a process
    that never starts a sweep writes no file."""

    _path: Path | None = None
    _pending: list[logging.LogRecord] = []

    def __init__(self, buffer: int = 2000):
        super().__init__()
        self.buffer = buffer
        self.setFormatter(logging.Formatter(FILE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        cls = SweepLogHandler
        try:
            if cls._path is None:
                if len(cls._pending) < self.buffer:
                    cls._pending.append(record)
                return
            self._write([record])
        except Exception:
            self.handleError(record)

    def _write(self, records: list[logging.LogRecord]) -> None:
        path = SweepLogHandler._path
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(self.format(record) + "\n")

    @classmethod
    def start(cls, path: Path) -> None:
        cls._path = Path(path)
        pending, cls._pending = cls._pending, []
        if pending:
            cls()._write(pending)


def set_sweep_log(path: Path) -> Path:
    """Write the sweep's log records (those waiting too) to ``path``; returns it."""
    SweepLogHandler.start(path)
    return Path(path)

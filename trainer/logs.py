"""Process-wide logging and warning settings, made once by each entry point (``python -m
sweeper``, ``-m evaluators``, ``-m bench``, ``-m trainer.tools``, ``-m sweeper.report``) and
never as a side effect of importing a module, so a program that imports the packages keeps its
own settings."""

from __future__ import annotations

import logging
import warnings

FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | None = logging.WARNING) -> None:
    """Configure this process's logging and silence the libraries' known noise.

    ``level``: the root logger's level, with a stderr handler in :data:`FORMAT`
    (``logging.basicConfig``); None leaves the handlers alone (``python -m sweeper``: Hydra
    sets up each job's logging from ``hydra/job_logging``). Silenced, whatever the level:

    * LyCORIS's INFO line for every module it wraps (kept: its warnings);
    * Optuna's ``ExperimentalWarning`` for the APIs the sweep uses on purpose (ask/tell with a
      heartbeat, metric names), matched by its message so Optuna is not imported here;
    * Optuna's warning that a storage heartbeat is meant for ``optimize``: the sweep beats for
      its own trials.
    """
    if level is not None:
        logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from v")
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

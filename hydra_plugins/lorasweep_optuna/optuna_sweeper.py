"""The Hydra ``Sweeper`` plugin: a thin shell around :class:`sweeper.sweep_loop.SweepRunner`.

Hydra imports every module under ``hydra_plugins`` at start-up (single runs too), so this one
imports nothing heavy until a sweep starts. The study settings and the search space live in
the job config's ``search`` group (``conf/search/``), not here.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module without
# registering it in sys.modules, and dataclasses then cannot resolve string annotations.
import sys
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class LorasweepOptunaSweeperConf:
    _target_: str = "hydra_plugins.lorasweep_optuna.optuna_sweeper.LorasweepOptunaSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="lorasweep_optuna",
    node=LorasweepOptunaSweeperConf,
    provider="lorasweep",
)


class LorasweepOptunaSweeper(Sweeper):
    """Optuna (ask/tell) over ``cfg.search``: pruning, resume, heartbeat, several workers."""

    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None  # noqa: UP045 - see the import note
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        # Hydra sets this for each job, not for the sweeper; the config's `${hydra:...}`
        # interpolations (paths.project_dir, the sweep dir) need it here too.
        HydraConfig.instance().set_config(config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from sweeper.interrupt import interruptible, report_and_exit
        from sweeper.sweep_loop import ResultsNotWrittenError, SweepRunner
        from trainer.errors import LorasweepError

        assert self.config is not None and self.hydra_context is not None
        runner = SweepRunner(self.config, self.launcher, self.hydra_context.config_loader)
        try:
            with interruptible():
                return runner.run(arguments)
        except KeyboardInterrupt as exc:
            study = f" {runner.study_name!r}" if runner.study_name else ""
            report_and_exit(
                exc,
                "the running trials were marked failed and queued again; run the same command "
                f"to resume the study{study}",
            )
        except LorasweepError as err:
            # A bad search space or too many failed trials: the message says what and where;
            # a traceback through Hydra would bury it.
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except ResultsNotWrittenError as err:  # not the user's input: a full disk, permissions
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

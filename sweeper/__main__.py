"""``python -m sweeper``: the Hydra application. One run, or with ``-m`` an Optuna sweep
(the project's sweeper plugin, ``hydra_plugins/lorasweep_optuna``).

A single run's config is read into typed settings and checked (every key, every image) before
anything imports torch, diffusers, transformers or mlflow: those are imported by
``sweeper.task`` only once the config is known to be good, so a typo is reported in the time
Hydra takes to compose the config.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from evaluators.model_cache import ModelPool
from trainer.errors import LorasweepError
from trainer.logs import setup_logging

log = logging.getLogger("sweeper")

# The models evaluations load (bases, CLIP/DINO, validation latents), kept for this process:
# every job it runs (one run, or a sweep's trials launched in-process) evaluates on the same
# loaded models. Creating it imports nothing heavy.
MODELS = ModelPool()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    from sweeper.category_families import family_defaults
    from sweeper.explicit import explicit_wins, override_keys
    from sweeper.interrupt import interruptible, report_and_exit

    try:
        overrides = HydraConfig.get().overrides.task
        cfg = explicit_wins(family_defaults(cfg, override_keys(overrides)), overrides)
        # A sweep's trial is checked by the trial itself (it records the failure).
        spec = None if HydraConfig.get().mode == RunMode.MULTIRUN else read_settings(cfg)
        if spec is not None:
            spec = check_libraries(cfg, spec)
        from sweeper.task import run_task  # the model libraries: the config is good

        with interruptible():
            return run_task(cfg, spec, MODELS)
    except KeyboardInterrupt as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper fails and re-queues the trial, then exits
        report_and_exit(exc, "the run stopped; the epochs saved so far are kept")
    except LorasweepError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # A sweep's job: the sweeper records the trial as failed with this reason and
            # goes on; exiting here would end the whole sweep.
            raise
        # The user's input is wrong: say what and where, without a traceback.
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def read_settings(cfg: DictConfig):
    """The run's typed settings (``trainer.settings.spec.RunSpec``), or ConfigError listing
    every problem of its keys and data; no model library is imported."""
    from sweeper.checks import key_problems
    from trainer.settings.spec import read_run_spec

    return read_run_spec(cfg, extra_checks=[key_problems])


def check_libraries(cfg: DictConfig, spec):
    """The checks that need a library but no model (the optimizer's class accepts its
    arguments, the VAE file's header, the scoring models are there), before the model
    libraries are imported: a refused run says so in the time torch takes to import."""
    from sweeper.checks import scoring_model_problems
    from trainer.validate import validate_run

    return validate_run(cfg, extra_checks=[scoring_model_problems], spec=spec)


def multirun_flag_first(argv: list[str]) -> list[str]:
    """Move ``-m``/``--multirun`` before the overrides: Hydra's argparse takes the overrides
    as one positional list, so ``python -m sweeper +category=F -m n=4`` would otherwise stop at
    ``-m`` and reject what follows."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return [argv[0], *flags, *(a for a in argv[1:] if a not in ("-m", "--multirun"))]


if __name__ == "__main__":
    setup_logging(None)  # Hydra configures the handlers
    sys.argv = multirun_flag_first(sys.argv)
    main()

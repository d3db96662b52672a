"""``python -m sweeper``: the Hydra application (one run; ``-m`` sweeps come with the sweeper)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from trainer.errors import LorasweepError

log = logging.getLogger("sweeper")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from sweeper.task import run_task

    try:
        return run_task(cfg)
    except LorasweepError as err:
        # The user's input is wrong: say what and where, without a traceback.
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

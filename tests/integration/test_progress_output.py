"""Progress bars and log lines: while the training bar runs, console log lines go through
tqdm.write (above the bar). (The evaluation's own bar: test_eval_harness.)"""

from __future__ import annotations

import logging
import sys

import pytest

from trainer.loop.callbacks import TrainingCallback
from trainer.models.tiny import build_tiny_components
from trainer.run import train_from_config


class _Handlers(TrainingCallback):
    def __init__(self):
        self.seen: list[list[str]] = []

    def on_step(self, step, metrics):
        self.seen.append([type(h).__name__ for h in logging.getLogger().handlers])
        logging.getLogger("sweeper").warning("a log line during training")


@pytest.fixture
def console_handler():
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.mark.parametrize("bar", [True, False])
def test_console_logging_goes_through_the_bar_only_while_it_is_shown(
    compose, console_handler, bar
):
    cfg = compose(
        "train.max_train_steps=2",
        "train.batch_size=2",
        "train.log_every_n_steps=1",
        f"train.progress_bar={bar}",
    )
    probe = _Handlers()
    train_from_config(cfg, callbacks=[probe], components=build_tiny_components())
    assert len(probe.seen) == 2
    redirected = ["_TqdmLoggingHandler" in names for names in probe.seen]
    assert redirected == [bar, bar]
    # Afterwards the console handler is back as it was.
    assert console_handler in logging.getLogger().handlers

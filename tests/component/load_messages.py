"""What diffusers, transformers and peft say while a LoRA file loads: the warnings their
loggers write (diffusers' logger does not propagate to the root) and the warnings raised.
The consumer-compatibility tests read them for any sign that a key was left out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LOGGERS = ("diffusers", "transformers", "peft")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def load_messages(future_warnings: bool = False) -> Iterator[list[str]]:
    """Yields the list the messages are collected in (complete when the block ends);
    ``FutureWarning`` s (deprecations of the libraries' own arguments) only on request."""
    handler = _Records()
    loggers = [logging.getLogger(n) for n in LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.messages
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.messages += [
            f"warning: {w.message}"
            for w in caught
            if future_warnings or not issubclass(w.category, FutureWarning)
        ]

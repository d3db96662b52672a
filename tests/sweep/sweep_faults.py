"""Test-only training callbacks, injected into sweep subprocesses through the config's
``callbacks:`` hook (this folder is put on their PYTHONPATH). Nothing in the project imports
this module."""

from __future__ import annotations

import time

import torch

from trainer.loop.callbacks import TrainingCallback


class SimulatedOutOfMemory(TrainingCallback):
    """Raises torch's out-of-memory error at the first step of trial ``fail_trial`` (there is
    no GPU to exhaust here); ``trial_number`` comes from ``${optuna.trial_number}``."""

    def __init__(self, trial_number: int, fail_trial: int):
        self.fail = int(trial_number) == int(fail_trial)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.fail:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the sweep tests)")


class SlowTrial(TrainingCallback):
    """Sleeps ``seconds`` at every step of trial ``slow_trial``, so a test can act while that
    trial runs (a tiny trial is over in about a second)."""

    def __init__(self, trial_number: int, slow_trial: int, seconds: float):
        self.seconds = float(seconds) if int(trial_number) == int(slow_trial) else 0.0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        time.sleep(self.seconds)

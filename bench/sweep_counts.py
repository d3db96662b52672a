"""A training callback that records, per trial and per epoch, what P4 counts.

Added to a sweep's trials by ``python -m bench sweep`` through the config's ``callbacks:``
group (``+callbacks.bench_counts={_target_: bench.sweep_counts.CountingCallback, path: ...}``).
It runs in the trial's own process and appends one JSON line per phase to ``path``:

* ``setup``: from the callback's creation (before the trainer loads the base model and
  prepares the latents) to the first step;
* ``epoch N``: from the previous phase to the save of epoch N, which holds the training of
  epoch N and the evaluation of epoch N - 1 (the evaluation runs after this callback);
* ``end``: the evaluation of the last (or pruned) epoch.

Trials of one sweeper process run one after the other, so a ``setup`` line starts a trial.

Each line has the VAE-encoded images, the evaluation's base-model loads
(``bench.counting``) and the trainer's base-model loads (calls of
``trainer.run.load_model``, counted by wrapping it while the trial runs: measurement only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import trainer.run
from bench.counting import Counts, counting
from trainer.loop.callbacks import TrainingCallback


class _CountingLoad:
    """Wraps ``trainer.run.load_model`` and counts calls."""

    def __init__(self, original):
        self.original, self.calls = original, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


class CountingCallback(TrainingCallback):
    def __init__(self, path: str):
        self.path = Path(path)
        original = trainer.run.load_model
        self._load = _CountingLoad(getattr(original, "original", original))
        trainer.run.load_model = self._load
        self._loads_seen = 0
        self._phase = "setup"
        self._context = counting()
        self._counts: Counts = self._context.__enter__()

    def _flush(self, next_phase: str | None) -> None:
        self._context.__exit__(None, None, None)
        line = {
            "pid": os.getpid(),
            "phase": self._phase,
            "vae_encoded_images": self._counts.vae_encoded_images,
            "eval_base_loads": self._counts.eval_base_loads,
            "trainer_base_loads": self._load.calls - self._loads_seen,
        }
        self._loads_seen = self._load.calls
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        if next_phase is None:
            trainer.run.load_model = self._load.original
            return
        self._phase = next_phase
        self._context = counting()
        self._counts = self._context.__enter__()

    def on_train_start(self, info: dict) -> None:
        self._flush("epoch 1")

    def on_epoch_end(self, record) -> None:
        # Before the evaluation's on_epoch_end when listed before it (configured callbacks are).
        if record.path is not None:
            self._flush(f"epoch {record.epoch + 1}")

    def on_train_end(self, result) -> None:
        # What ran since the last save: that epoch's evaluation (the callbacks after this
        # one on the last save, and the evaluation's on_train_end only run after this).
        self._phase = "end"
        self._flush(None)

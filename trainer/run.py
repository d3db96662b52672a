"""Train from a composed config: read the settings, set the run up, train in the selected mode.

Every mode goes through the same three steps, each a named function a reader can follow:

1. :func:`~trainer.validate.validate_run`: the config read into a typed
   :class:`~trainer.settings.spec.RunSpec` (every problem reported at once, before any model
   is loaded);
2. :func:`~trainer.modes.common.start_run`: device, determinism, the run folder with the
   resolved config, the frozen base model on the device;
3. the mode of the ``train`` group (``train=lora`` | ``dreambooth`` | ``textual_inversion``):
   it adds what it trains and what it saves, and runs the shared loop
   (``trainer.loop.train.run_training``), which never sees the config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from omegaconf import DictConfig

from trainer.loop.callbacks import TrainingCallback
from trainer.loop.train import TrainResult
from trainer.modes.common import Run, start_run
from trainer.networks.compat import warn_consumers
from trainer.settings.spec import RunSpec
from trainer.validate import validate_run

# The train group's mode -> "module:function" that trains it, given the set-up run.
MODE_TRAINERS = {
    "lora": "trainer.modes.lora:train_lora",
    "dreambooth": "trainer.modes.dreambooth:train_dreambooth",
    "textual_inversion": "trainer.modes.textual_inversion:train_textual_inversion",
}


def train_from_config(
    cfg: DictConfig,
    callbacks: Iterable[TrainingCallback] = (),
    components=None,
    spec: RunSpec | None = None,
) -> TrainResult:
    """Validate ``cfg`` (before any model is loaded), train, and write the run's files.

    ``components`` may be given to reuse an already loaded base model (it is modified in
    place: adapters are injected, or its weights trained). ``spec``: the settings the caller
    already read with ``validate_run`` (it opens every image; once is enough).
    """
    if spec is None:
        spec = validate_run(cfg)
    if spec.train.mode == "lora":
        warn_consumers(cfg.network)  # the file's type vs network.target_consumer
    run = start_run(cfg, spec, components)
    return mode_trainer(spec.train.mode)(run, callbacks)


def mode_trainer(mode: str) -> Callable[[Run, Iterable[TrainingCallback]], TrainResult]:
    """The function that trains ``mode`` (imported on use: each mode needs its own modules)."""
    module, _, name = MODE_TRAINERS[mode].partition(":")
    return getattr(importlib.import_module(module), name)

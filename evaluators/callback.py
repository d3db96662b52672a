"""Evaluate each saved epoch while training runs: a ``TrainingCallback``.

    from evaluators.callback import EvaluationCallback
    evaluation = EvaluationCallback(cfg)                 # cfg: the whole composed run config
    result = train_from_config(cfg, callbacks=[evaluation, reporter])
    result.scores.get(4)["eval/objective"]              # epoch -> flat metrics, all callbacks'
    evaluation.results[4]                                # the evaluation's own metrics
    evaluation.best_epoch                               # epoch with the highest objective

Constructor: ``EvaluationCallback(cfg, output_dir=None, harness=None, pool=None)``.
``cfg`` is the composed run config (groups ``eval``, ``model``, ``data``, ``paths``);
``output_dir`` receives grids and metrics files (default: ``eval.output_dir``, else
``<paths.output_dir>/eval``); ``harness`` reuses an :class:`~evaluators.harness.Harness`
(default: one built from ``cfg``, which checks the ``eval`` group and the checkpoints now, with
its models from ``pool``, a :class:`~evaluators.model_cache.ModelPool` the caller keeps across
runs, or a new one).

It evaluates every ``eval.every_n_epochs``-th saved epoch and always the last one
(``record.is_last``), in ``on_epoch_end``, and adds the metrics to the run's scores
(``record.scores``) where the callbacks that read them (tracking, the pruning reporter) find
them in ``on_epoch_scored``, wherever they sit in the list. ``every_n_epochs: auto`` picks,
when training starts, the smallest N that keeps the estimated evaluation cost at most
``eval.max_overhead`` of the training cost (:mod:`evaluators.cadence`).

The strength grid (``eval.strengths`` and the UNet x TE pairs) costs one generation per pair;
``eval.grid_epochs`` says which epochs get it: ``all`` (every evaluated epoch: the guide's
epoch x strength grid), ``last``, ``best`` (the default: when training ends, the epoch with the
highest objective; not for a pruned run) or ``none``. Other epochs are scored at strength 1.0
only, where the objective is read, so a pruner and the choice of epoch see the same numbers
either way; the grid reads over/under-training and the UNet/TE balance of the epoch a user
would keep. The epoch's scores then gain the grid's metrics. ``evaluations[epoch]`` keeps the
full :class:`~evaluators.results.EpochEvaluation` (images, per-cell scores, diagnosis) and
``files[epoch]`` the paths written for it, for tracking to log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from evaluators.cadence import auto_every_n_epochs, evaluation_units, overhead
from evaluators.harness import Harness
from evaluators.model_cache import ModelPool
from evaluators.objective import NOT_MEASURED
from evaluators.outputs import EpochStrengthGrids, write_metrics, write_unet_te_grids
from evaluators.results import EpochEvaluation
from trainer.loop.callbacks import TrainingCallback, best_epoch

log = logging.getLogger(__name__)


def default_output_dir(cfg) -> Path | None:
    configured = cfg.eval.get("output_dir") if "eval" in cfg else None
    if configured:
        return Path(configured)
    if "paths" in cfg and cfg.paths.get("output_dir"):
        return Path(cfg.paths.output_dir) / "eval"
    return None


class EvaluationCallback(TrainingCallback):
    """Scores saved epochs; ``results[epoch]`` is the flat metric dict of that epoch."""

    def __init__(
        self,
        cfg,
        output_dir: str | Path | None = None,
        harness: Harness | None = None,
        pool: ModelPool | None = None,
    ):
        self.cfg = cfg
        self.harness = harness or Harness.from_config(cfg, pool)
        self.output_dir = Path(output_dir) if output_dir else default_output_dir(cfg)
        # "auto" until on_train_start, which knows the epoch's size and sets an int.
        self.every_n_epochs: int | str = self.harness.settings.every_n_epochs
        self.evaluations: dict[int, EpochEvaluation] = {}
        self.files: dict[int, dict[str, Path]] = {}
        settings = self.harness.settings
        self._grids = EpochStrengthGrids(list(settings.strengths), settings.images_per_prompt)

    @property
    def results(self) -> dict[int, dict[str, float]]:
        """epoch -> the evaluation's flat metrics of each evaluated epoch."""
        return {epoch: e.metrics for epoch, e in sorted(self.evaluations.items())}

    @property
    def best_epoch(self) -> int | None:
        best = best_epoch(self.results, "eval/objective", "maximize")
        return best[0] if best else None

    @property
    def best_objective(self) -> float | None:
        best = best_epoch(self.results, "eval/objective", "maximize")
        return best[1] if best else None

    def on_train_start(self, info: dict) -> None:
        if self.every_n_epochs == "auto":
            self.every_n_epochs = self._auto_cadence(info)

    def _auto_cadence(self, info: dict) -> int:
        s = self.harness.settings
        images = info.get("images_per_epoch")
        if not images and info.get("batches_per_epoch") and info.get("batch_size"):
            images = info["batches_per_epoch"] * info["batch_size"]
        if not images:
            log.warning("eval.every_n_epochs=auto: the epoch size is unknown; every epoch")
            return 1
        width, height = self.harness.size
        resolution = self.cfg.model.get("resolution") if "model" in self.cfg else None
        train_pixels = int(resolution) ** 2 if resolution else width * height
        n_items = len(self.harness.items()) if s.generation_metrics else 0
        units = evaluation_units(
            s, n_items, len(self.harness.checkpoints), width * height, train_pixels
        )
        n = auto_every_n_epochs(units, int(images), s.max_overhead)
        log.info(
            "eval.every_n_epochs=auto: every %d epoch(s) (and the last); evaluation ~%.0f%% of "
            "training (%.0f UNet forwards per evaluation, %d images per epoch; "
            "eval.max_overhead %.0f%%)",
            n,
            100 * overhead(units, int(images), n),
            units,
            int(images),
            100 * s.max_overhead,
        )
        return n

    def on_epoch_end(self, record) -> None:
        if record.path is None:
            return
        if record.epoch % self.every_n_epochs == 0 or record.is_last:
            policy = self.harness.settings.grid_epochs
            grid = policy == "all" or (policy == "last" and record.is_last)
            record.scores.add(record.epoch, self.evaluate(record.epoch, record.path, grid=grid))

    def on_train_end(self, result) -> None:
        # A callback may stop training at an epoch the cadence skipped: its file is the one a
        # user keeps, so it is evaluated now.
        policy = self.harness.settings.grid_epochs
        if result.saved and result.saved[-1].epoch not in self.evaluations:
            last = result.saved[-1]
            metrics = self.evaluate(last.epoch, Path(last.path), grid=policy in ("all", "last"))
            result.scores.add(last.epoch, metrics)
        best = self.best_epoch
        if policy == "best" and best is not None:
            if result.pruned:
                log.info("pruned run: no strength grid for epoch %d", best)
            else:
                result.scores.add(best, self.add_grid(best))

    def add_grid(self, epoch: int) -> dict[str, float]:
        """Score an evaluated epoch at the rest of the strength grid (nothing if it has it)."""
        earlier = self.evaluations[epoch]
        if not self._missing_pairs(earlier):
            return earlier.metrics
        log.info("epoch %d: scoring the strength grid", epoch)
        evaluation = self.harness.evaluate(earlier.lora_path, epoch, extend=earlier)
        return self._record(epoch, evaluation)

    def evaluate(self, epoch: int, path: Path, grid: bool = True) -> dict[str, float]:
        """Evaluate one file now (``grid``: at every strength pair, else at 1.0 only); record
        and write its results; return its metrics."""
        pairs = None if grid else [(1.0, 1.0)]
        return self._record(epoch, self.harness.evaluate(path, epoch, pairs=pairs))

    def _record(self, epoch: int, evaluation: EpochEvaluation) -> dict[str, float]:
        self.evaluations[epoch] = evaluation
        self.files[epoch] = self._write(evaluation)
        evaluation.files = self.files[epoch]
        # An epoch scored at 1.0 only has no strength reading: said once per epoch in the
        # run's log file, not on the terminal (the grid's reading is).
        measured = evaluation.diagnosis.state != NOT_MEASURED
        for note in evaluation.diagnosis.notes:
            log.info("epoch %d: %s", epoch, note, extra={"terminal": measured})
        return evaluation.metrics

    def _missing_pairs(self, evaluation: EpochEvaluation) -> set[tuple[float, float]]:
        scored = {(u, t) for _, u, t in evaluation.scores}
        return set(self.harness.settings.strength_pairs()) - scored

    def _prompts(self) -> list[str]:
        """The generated prompts in order (one row each in a grid's cell)."""
        prompts: dict[int, str] = {}
        for item in self.harness.items():
            prompts.setdefault(item.prompt_index, item.prompt)
        return [prompts[k] for k in sorted(prompts)]

    def _write(self, evaluation: EpochEvaluation) -> dict[str, Path]:
        if self.output_dir is None:
            return {}
        s = self.harness.settings
        files = {"metrics": write_metrics(evaluation, self.output_dir)}
        if s.save_grids:
            unet, te = list(s.unet_strengths), list(s.te_strengths)
            prompts = self._prompts() if any(evaluation.images.values()) else []
            if not self._missing_pairs(evaluation):  # not for an epoch scored at 1.0 only
                files.update(
                    write_unet_te_grids(
                        evaluation, self.output_dir, unet, te, s.images_per_prompt, prompts
                    )
                )
            self._grids.add(evaluation)
            files.update(self._grids.save(self.output_dir, prompts))
        return files

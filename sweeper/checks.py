"""Up-front checks of the groups the trainer does not know (``eval``, ``search``), passed to
``trainer.validate.validate_run`` so that every problem of a run is reported at once, before a
model is loaded or a tracked run exists."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sweeper.callbacks import TRAINING_METRICS

# What the other training modes save per epoch (trainer/modes/): not something to hot-swap.
SAVES = {
    "dreambooth": "whole checkpoints",
    "textual_inversion": "textual-inversion embeddings",
}


def objective_metrics(cfg: DictConfig) -> list[str]:
    """``search.metrics`` (default ``eval/objective``): what a run or trial is scored by."""
    return list(OmegaConf.select(cfg, "search.metrics", default=None) or ["eval/objective"])


def needs_evaluation(metrics: list[str]) -> bool:
    return any(m not in TRAINING_METRICS for m in metrics)


def evaluation_problems(cfg: DictConfig) -> list[str]:
    """The ``eval`` group's problems when the evaluators will run, and search metrics that the
    evaluation would not produce at every evaluated epoch."""
    metrics = objective_metrics(cfg)
    if not needs_evaluation(metrics) or "eval" not in cfg:
        return []
    from evaluators.objective import DIAGNOSIS_METRICS
    from evaluators.settings import eval_config_problems

    problems = eval_config_problems(cfg.eval)
    mode = OmegaConf.select(cfg, "train.mode", default="lora")
    if mode in SAVES:
        problems.append(
            f"search.metrics: {metrics} need the evaluators, which score LoRA files on base "
            f"models, and train.mode={mode} saves {SAVES[mode]}; use "
            "search.metrics=[train/epoch_loss] with search.directions=[minimize] (or "
            "train.save_lora_dim for an extracted LoRA of the last DreamBooth epoch, scored with "
            "python -m evaluators)"
        )
    grid_epochs = cfg.eval.get("grid_epochs", "best")
    if grid_epochs != "all":
        for i, metric in enumerate(metrics):
            if "@" in metric or metric.removeprefix("eval/") in DIAGNOSIS_METRICS:
                problems.append(
                    f"search.metrics[{i}]: {metric!r} is only computed for epochs scored at "
                    f"every strength, and eval.grid_epochs is {grid_epochs!r}; set "
                    "eval.grid_epochs=all, or use a metric at strength 1.0 (e.g. eval/objective)"
                )
    return problems

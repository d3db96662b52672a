"""Up-front checks of the groups the trainer does not know (``eval``, ``search``), passed to
``trainer.validate.validate_run`` so that every problem of a run is reported at once, before a
model is loaded or a tracked run exists."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sweeper.callbacks import TRAINING_METRICS

# The world oracle's metrics (eval/oracle_*): reported, never a sweep's objective.
ORACLE_PREFIX = "oracle_"
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


def run_problems(cfg: DictConfig) -> list[str]:
    """The sweeper's checks of a run's config: :func:`key_problems`, and whether the scoring
    models of the evaluation can load (imports torch and transformers)."""
    return key_problems(cfg) + scoring_model_problems(cfg)


def key_problems(cfg: DictConfig) -> list[str]:
    """The sweeper's checks of a run's keys, without importing a model library: the ``eval``
    group and the metrics it must produce, and keys that no option file declares (they would
    do nothing)."""
    from sweeper.config_keys import unknown_key_problems

    return evaluation_problems(cfg, models=False) + unknown_key_problems(cfg)


def scoring_model_problems(cfg: DictConfig) -> list[str]:
    """The scoring models the evaluation would load and cannot (none when it does not run)."""
    from evaluators.settings import read_eval_settings, scoring_model_problems
    from trainer.errors import ConfigError

    if "eval" not in cfg or not needs_evaluation(objective_metrics(cfg)):
        return []
    try:
        return scoring_model_problems(read_eval_settings(cfg.eval))
    except ConfigError:
        return []  # reported by key_problems


def evaluation_problems(cfg: DictConfig, models: bool = True) -> list[str]:
    """The ``eval`` group's problems when the evaluators will run, and search metrics that the
    evaluation would not produce at every evaluated epoch. ``models``: also whether the
    scoring models can load (imports torch and transformers)."""
    metrics = objective_metrics(cfg)
    if "eval" not in cfg:
        return []
    from evaluators.objective import DIAGNOSIS_METRICS
    from evaluators.settings import eval_config_problems

    problems = eval_config_problems(cfg.eval, models=models)
    if not needs_evaluation(metrics):
        # The evaluators will not run; a metric name that no scorer has is wrong all the same.
        return [p for p in problems if p.startswith("eval.metrics")]
    problems += metric_name_problems(cfg.eval, metrics)
    from trainer.families import DEFAULT_FAMILY, family_limit_problems

    family = OmegaConf.select(cfg, "model.family", default=DEFAULT_FAMILY)
    problems += family_limit_problems(family, {"eval.sampler": cfg.eval.get("sampler")})
    if not cfg.eval.get("trigger"):
        from evaluators.references import trigger_problem

        problem = trigger_problem(OmegaConf.select(cfg, "data.dir", default=None))
        problems += [problem] if problem else []
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


def metric_name_problems(eval_cfg, metrics: list[str]) -> list[str]:
    """``search.metrics`` that neither the training loop nor the evaluation (as ``eval_cfg``
    configures it) produces: a sweep would fail at its first evaluated epoch."""
    from evaluators.settings import produced_metrics, read_eval_settings
    from trainer.errors import ConfigError

    try:
        names, pairs, diagnosis = produced_metrics(read_eval_settings(eval_cfg))
    except ConfigError:
        return []  # the eval group's own problems are reported; names follow from them
    allowed = {*TRAINING_METRICS, *(f"eval/{n}" for n in names + diagnosis)}
    searchable = [n for n in names + diagnosis if not n.startswith(ORACLE_PREFIX)]
    allowed |= {f"eval/{n}{pair}" for n in names for pair in pairs}
    problems = []
    for i, metric in enumerate(metrics):
        name = metric.removeprefix("eval/")
        if name.rpartition("/")[2].startswith(ORACLE_PREFIX):
            problems.append(
                f"search.metrics[{i}]: {metric!r} is the world oracle's, which only reports: it "
                "is the referee the objective is checked against, so no sweep may optimise it; "
                "use eval/objective (or another scorer metric)"
            )
            continue
        per_checkpoint = name.startswith("ckpt/") and name.rpartition("/")[2] in names
        if metric in allowed or (per_checkpoint and eval_cfg.get("checkpoints")):
            continue
        problems.append(
            f"search.metrics[{i}]: {metric!r} is produced by nobody (eval.metrics="
            f"{list(eval_cfg.metrics)}); allowed: "
            f"{', '.join([*TRAINING_METRICS, *(f'eval/{n}' for n in searchable)])}, "
            f"eval/<name>@<pair> for the strength pairs ({', '.join(p[1:] for p in pairs)}), "
            "eval/ckpt/<checkpoint>/<name> with several eval.checkpoints"
        )
    return problems

"""The sweep's results file: best trial(s), every trial's state, and the command that
reproduces the best trial as a single run."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from sweeper.lockfile import environment
from sweeper.provenance import git_state
from sweeper.search_config import SEARCH_KEYS
from sweeper.study import count_states
from trainer.atomic_write import write_text
from trainer.logs import RUN_LOG, SWEEP_LOG, hidden_count

RESULTS_FILE = "optuna_results.yaml"
PROJECT_DIR = Path(__file__).resolve().parents[1]
# Overrides that only steer the sweep: a single run does not need them.
_SWEEP_ONLY = ("hydra.", "hydra/", "optuna.")
# The search keys that only say how trials are proposed, pruned, counted and stored. The others
# (a ``search=<preset>`` choice, ``search.metrics``, ``search.directions``) choose the objective
# a run picks its best epoch by: a reproduced run keeps them, or it would keep another epoch.
# ``search.category_families`` sets a category run's default rank: kept too.
_SWEEP_ONLY_SEARCH = set(SEARCH_KEYS) - {"directions", "metrics", "category_families"}


def _sweep_only(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    if key.startswith(_SWEEP_ONLY):
        return True
    return key.startswith("search.") and key.split(".")[1] in _SWEEP_ONLY_SEARCH


def python_command() -> str:
    """The interpreter to write in a command: the project's ``.venv/bin/python`` when this
    process runs from that environment (the command is run in the project folder), else
    ``python``; never this machine's absolute path."""
    try:
        inside = Path(sys.prefix).resolve() == (PROJECT_DIR / ".venv").resolve()
    except OSError:
        inside = False
    return ".venv/bin/python" if inside else "python"


def reproduce_command(fixed: Sequence[str], trial_overrides: Sequence[str]) -> str:
    """``<python> -m sweeper <fixed overrides> <the trial's sampled overrides>``: every config
    group and key that shaped the trial, the objective included; not the sweep's own steering
    (sampler, pruner, trial count, storage, Hydra's sweep settings)."""
    keep = [o for o in fixed if not _sweep_only(o)]
    words = [shlex.quote(o) for o in [*keep, *trial_overrides]]
    return " ".join([f"{python_command()} -m sweeper", *words])


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def trial_summary(trial: FrozenTrial, fixed: Sequence[str]) -> dict[str, Any]:
    attrs = trial.user_attrs
    summary = {
        "number": trial.number,
        "state": trial.state.name,
        "values": [_plain(v) for v in trial.values] if trial.values else None,
        "params": attrs.get("config_values", {}),
        "optuna_params": trial.params,
        "best_epoch": attrs.get("best_epoch"),
        "epoch_metrics": attrs.get("epoch_metrics"),
        "best_file": attrs.get("best_file"),
        "pruned_at_epoch": attrs.get("pruned_at_epoch"),
        "fail_reason": attrs.get("fail_reason"),
        "retry_of": trial.system_attrs.get("failed_trial", attrs.get("requeued_from")),
        "duplicate_of": attrs.get("duplicate_of"),
        "output_dir": attrs.get("output_dir"),
        "worker": attrs.get("job_worker"),
        "command": reproduce_command(fixed, attrs.get("overrides", [])),
    }
    for where in ("device", "slurm_job_id"):  # search.devices, hydra/launcher=submitit_slurm
        if where in attrs:
            summary[where] = attrs[where]
    if trial.state == TrialState.FAIL and summary["fail_reason"] is None:
        summary["fail_reason"] = "the process running it stopped (no heartbeat)"
    return summary


def run_environment(project_dir: str | Path) -> dict[str, str]:
    """The code and the environment the sweep ran with: git commit (and whether the tree had
    uncommitted changes), the lock file's sha256, any drift of the installed packages from it,
    and the command that rebuilds that environment."""
    git = git_state(project_dir)
    env: dict[str, str] = {}
    if git:
        env |= {"git_commit": git["commit"], "git_dirty": git["dirty"]}
    return env | environment(project_dir, git.get("commit"))


def summarize(
    study: optuna.Study,
    fixed: Sequence[str],
    n_trials: int,
    storage: str,
    env: dict[str, str] | None = None,
    grid_size: int | None = None,
) -> dict:
    """The results file's content. ``grid_size``: the points of a grid sampler's grid, which
    ends the sweep when walked (the target is then the smaller of it and ``n_trials``)."""
    trials = study.get_trials(deepcopy=False)
    multi = len(study.directions) > 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "storage": make_url(storage).render_as_string(hide_password=True),
        "directions": [d.name.lower() for d in study.directions],
        "metrics": study.metric_names,
        "n_trials": n_trials,
        "target": min(n_trials, grid_size) if grid_size else n_trials,
        "states": {k: v for k, v in count_states(study).items() if v},
    }
    if grid_size:
        summary["grid_size"] = grid_size
    if env:
        summary["environment"] = dict(env)
    if complete and multi:
        summary["pareto_front"] = [trial_summary(t, fixed) for t in study.best_trials]
    elif complete:
        summary["best"] = trial_summary(study.best_trial, fixed)
    summary["trials"] = [trial_summary(t, fixed) for t in trials]
    return summary


def write_results(path: Path, summary: dict) -> Path:
    return write_text(path, OmegaConf.to_yaml(OmegaConf.create(summary)))


def print_summary(
    summary: dict, path: Path, storage: str | None = None, dashboard: str | None = None
) -> None:
    """The sweep's end: best trial(s), the results file, and the commands of the report and
    the dashboard. ``storage``: the Optuna storage URL when not the default one."""
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary["states"].items())
    target = summary.get("target", summary["n_trials"])
    if summary.get("grid_size"):
        target = f"{target}, a grid of {summary['grid_size']} points"
    print(f"\nStudy {summary['study_name']} ({states}; target {target})")
    best = [summary["best"]] if "best" in summary else summary.get("pareto_front", [])
    if "pareto_front" in summary:
        print(f"Pareto front ({len(best)} trials) of {summary['metrics']}:")
    label = "Pareto trial" if "pareto_front" in summary else "Best trial"
    for trial in best:
        print(
            f"{label} {trial['number']}: {summary['metrics']} = {trial['values']} at epoch "
            f"{trial['best_epoch']}\n  params: {trial['params']}\n  file: {trial['best_file']}"
            f"\n  reproduce: {trial['command']}"
        )
    if not best:
        print("No trial completed.")
    env = summary.get("environment") or {}
    if env.get("lock_drift", "none") != "none":
        print(f"Warning: installed packages differ from {env['lock_file']}: {env['lock_drift']}")
    print(f"Results: {path}")
    log_file = Path(path).parent / SWEEP_LOG
    if log_file.is_file():
        hidden = hidden_count()
        kept = f" ({hidden} library and per-epoch lines not shown above)" if hidden else ""
        print(f"Log: {log_file} and each trial's {RUN_LOG}{kept}")
    report = [python_command(), "-m", "sweeper.report", "--study", summary["study_name"]]
    if storage:
        report += ["--storage", storage]
    print(f"Report: {shlex.join(report)}")
    where = f", then open {dashboard} (the study's experiment)" if dashboard else ""
    print(f"Dashboard (MLflow): make ui{where}")

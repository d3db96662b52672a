"""Everything the report shows, gathered from the Optuna storage (trials, values, per-epoch
scores), the sweep's results file (the reproduction commands), MLflow (provenance tags, and the
evaluation outputs when the trial folders are not on this machine) and the trial folders."""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweeper.lockfile import environment
from sweeper.provenance import data_hash_of, git_state, package_versions
from sweeper.report.evaluation import (
    EvaluationOutputs,
    local_config,
    local_eval_folder,
    mlflow_config,
    mlflow_eval_folder,
    read_eval_folder,
)
from sweeper.results import RESULTS_FILE, reproduce_command
from sweeper.tracking.runs import STUDY_ATTR_PARENT, STUDY_ATTR_URI, TRIAL_ATTR_RUN, hide_password

log = logging.getLogger(__name__)
TOP_TRIALS = 10
# Below this many complete trials, fANOVA importances are shown with a warning: a handful of
# points cannot separate a parameter's effect from noise.
MIN_TRIALS_FOR_IMPORTANCE = 10


@dataclass
class TrialInfo:
    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    best_epoch: int | None
    epoch_metrics: dict[int, dict[str, float]]
    fail_reason: str | None
    pruned_at: int | None
    output_dir: str | None
    run_id: str | None
    command: str | None
    best_file: str | None = None


@dataclass
class ReportData:
    study_name: str
    storage: str
    directions: list[str]
    metrics: list[str]
    states: dict[str, int]
    trials: list[TrialInfo]
    best: list[TrialInfo]
    ranked: list[TrialInfo]
    """Complete trials, best first by the first objective (at most ``TOP_TRIALS``)."""
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    importance_note: str | None = None
    outputs: EvaluationOutputs = field(default_factory=EvaluationOutputs)
    config: dict | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    tracking: dict[str, str] = field(default_factory=dict)
    generated: str = ""

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


def _finite(values: list[float] | None) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def _results_commands(trials: list[FrozenTrial]) -> dict[int, str]:
    """Trial number -> command, from the results file next to the trial folders."""
    commands: dict[int, str] = {}
    dirs = [t.user_attrs.get("output_dir") for t in trials]
    for folder in sorted({Path(d).parent for d in dirs if d}):
        path = folder / RESULTS_FILE
        if path.is_file():
            for entry in OmegaConf.to_container(OmegaConf.load(path)).get("trials", []):
                commands.setdefault(int(entry["number"]), entry.get("command"))
    return commands


def trial_info(trial: FrozenTrial, command: str | None) -> TrialInfo:
    attrs = trial.user_attrs
    epochs = {int(e): dict(v) for e, v in (attrs.get("epoch_metrics") or {}).items()}
    return TrialInfo(
        number=trial.number,
        state=trial.state.name,
        values=list(trial.values) if trial.values else None,
        params=dict(attrs.get("config_values") or trial.params),
        best_epoch=attrs.get("best_epoch"),
        epoch_metrics=epochs,
        fail_reason=attrs.get("fail_reason"),
        pruned_at=attrs.get("pruned_at_epoch"),
        output_dir=attrs.get("output_dir"),
        run_id=attrs.get(TRIAL_ATTR_RUN),
        command=command,
        best_file=attrs.get("best_file"),
    )


def _importances(study: optuna.Study, names: list[str]) -> tuple[dict, str | None]:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2 or not any(t.params for t in complete):
        return {}, "needs at least two complete trials with searched parameters"
    out: dict[str, dict[str, float]] = {}
    try:
        for i, name in enumerate(names):
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            out[name] = optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=lambda t, i=i: t.values[i]
            )
    except (RuntimeError, ValueError) as exc:  # e.g. no parameter varied
        return out, f"not computable: {exc}"
    return out, None


def _ranked(trials: list[TrialInfo], directions: list[str]) -> list[TrialInfo]:
    done = [t for t in trials if t.state == "COMPLETE" and _finite(t.values)]
    sign = -1.0 if directions[0] == "maximize" else 1.0
    return sorted(done, key=lambda t: (sign * t.values[0], t.number))[:TOP_TRIALS]


PROVENANCE_TAGS = (
    "git.commit",
    "git.dirty",
    "lock.sha256",
    "lock.drift",
    "environment.rebuild",
    "data.hash",
)


def _provenance(reader, run_id: str | None, config: dict | None) -> tuple[dict, dict, str]:
    """Tags of the best trial's run; recomputed now (and said so) without tracking."""
    tags = reader.tags(run_id) if reader is not None and run_id else {}
    if tags.get("git.commit"):
        versions = {
            k.removeprefix("version."): v for k, v in tags.items() if k.startswith("version.")
        }
        prov = {k: tags[k] for k in PROVENANCE_TAGS if k in tags}
        return prov, versions, "recorded by the best trial's MLflow run"
    prov: dict[str, str] = {}
    git = git_state(Path.cwd())
    if git:
        prov |= {"git.commit": git["commit"], "git.dirty": git["dirty"]}
    env = environment(Path.cwd(), git.get("commit"))
    if env:
        prov |= {
            "lock.sha256": env["lock_sha256"],
            "lock.drift": env["lock_drift"],
            "environment.rebuild": env["rebuild"],
        }
    data = (config or {}).get("data")
    digest = data_hash_of(OmegaConf.create(data)) if data else None
    if digest:
        prov["data.hash"] = digest
    return prov, package_versions(), "computed when this report was written (no MLflow run)"


def gather(
    study: optuna.Study, storage_url: str, reader=None, scratch: Path | None = None
) -> ReportData:
    """Read everything the report needs. ``reader`` is a
    :class:`~sweeper.tracking.reader.RunReader` on the study's store, or None."""
    frozen = study.get_trials(deepcopy=False)
    fixed = study.user_attrs.get("fixed_overrides")
    commands = _results_commands(frozen)
    infos = []
    for t in frozen:
        command = commands.get(t.number)
        if command is None and fixed is not None:
            command = reproduce_command(fixed, t.user_attrs.get("overrides", []))
        infos.append(trial_info(t, command))
    directions = [d.name.lower() for d in study.directions]
    names = list(study.metric_names or [f"objective {i}" for i in range(len(directions))])
    by_number = {t.number: t for t in infos}
    has_complete = any(t.state == TrialState.COMPLETE for t in frozen)
    best_frozen: list[FrozenTrial] = []
    if has_complete:
        best_frozen = study.best_trials if len(directions) > 1 else [study.best_trial]
    counts = {s.name: sum(t.state == s for t in frozen) for s in TrialState}
    data = ReportData(
        study_name=study.study_name,
        storage=hide_password(storage_url),
        directions=directions,
        metrics=names,
        states={name: n for name, n in counts.items() if n},
        trials=infos,
        best=[by_number[t.number] for t in best_frozen],
        ranked=_ranked(infos, directions),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    data.importances, data.importance_note = _importances(study, names)
    data.tracking = {
        "uri": hide_password(study.user_attrs.get(STUDY_ATTR_URI, "")),
        "parent_run_id": study.user_attrs.get(STUDY_ATTR_PARENT, ""),
    }
    if data.best:
        _best_outputs(data, data.best[0], reader, scratch)
    return data


def _best_outputs(data: ReportData, best: TrialInfo, reader, scratch: Path | None) -> None:
    scratch = scratch or Path(tempfile.mkdtemp(prefix="lorasweep-report-"))
    config = local_config(best.output_dir) or mlflow_config(reader, best.run_id, scratch)
    folder = local_eval_folder(best.output_dir, config) or mlflow_eval_folder(
        reader, best.run_id, scratch
    )
    data.config = config
    if folder is not None:
        data.outputs = read_eval_folder(folder, best.best_epoch)
    provenance, data.versions, source = _provenance(reader, best.run_id, config)
    data.provenance = {**provenance, "source": source}

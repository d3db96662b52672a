"""The sweeper process's side of tracking: the parent run of a study.

    tracker = start_sweep_run(config, study, fixed)      # after the study is opened
    overrides += job_overrides(tracker)                  # with the trial's identity
    record_trial(tracker, study, trial.number)           # after each tell
    finish_sweep_run(tracker, summary, results_path)     # when the sweep ends

The parent's id and the tracking URI are stored on the Optuna study (user attributes), so a
rerun of the same study reopens the same parent run, and the report finds the MLflow side of a
study from its storage alone. Workers starting a new study together call this one at a time
(under the study's storage lock, ``sweeper.ask_lock``): the first creates the parent, the others
reopen it, so every trial of the study nests under one parent run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from sweeper.tracking.runs import (
    STUDY_ATTR_PARENT,
    STUDY_ATTR_URI,
    TRIAL_ATTR_RUN,
    Tracker,
    TrackingSettings,
    _client,
    flatten,
    hide_password,
    open_run,
    provenance_tags,
    read_tracking,
    resolved_container,
)


def _reopen(settings: TrackingSettings, study: optuna.Study) -> Tracker | None:
    """The study's parent run from an earlier sweep, set RUNNING again; None if there is none
    in this store (first sweep, or another tracking URI since)."""
    run_id = study.user_attrs.get(STUDY_ATTR_PARENT)
    if not run_id or study.user_attrs.get(STUDY_ATTR_URI) != settings.uri:
        return None
    try:
        client = _client(settings)
        client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
    except Exception:  # noqa: BLE001 - deleted or unreachable: start a new parent
        return None
    return Tracker(client, run_id, settings)


def start_sweep_run(config: DictConfig, study: optuna.Study, fixed: Sequence[str]) -> Tracker:
    """Open (or reopen) the study's parent run; a disabled tracker when tracking is off."""
    settings = read_tracking(config.get("tracking"))
    if not settings.enabled:
        return Tracker()
    tracker = _reopen(settings, study)
    if tracker is None:
        tags = {
            "lorasweep.role": "sweep",
            "optuna.study": study.study_name,
            "optuna.directions": ",".join(d.name.lower() for d in study.directions),
            **provenance_tags(config),
        }
        experiment = settings.experiment or study.study_name
        tracker = open_run(settings, experiment, study.study_name, tags)
        if not tracker.active:
            return tracker
        # Params are immutable in MLflow: only a new parent gets them.
        search = resolved_container(config.search) if "search" in config else {}
        tracker.log_params({"sweep.overrides": " ".join(fixed), **flatten(search, "search.")})
    study.set_user_attr(STUDY_ATTR_URI, settings.uri)
    study.set_user_attr(STUDY_ATTR_PARENT, tracker.run_id)
    tracker.set_tags({"optuna.metrics": ",".join(study.metric_names or [])})
    describe_in_ui(tracker, study)
    container = resolved_container(config)
    tracker.log_text(OmegaConf.to_yaml(OmegaConf.create(container)), "config/sweep_config.yaml")
    return tracker


def ui_note(study: optuna.Study, sweep_run_name: str) -> str:
    """What the MLflow UI shows as the experiment's description: where the runs are and
    which columns to add (a client cannot set the UI's column view: the browser keeps it)."""
    metrics = study.metric_names or ["eval/objective"]
    columns = ", ".join(f"`{m}`" for m in [*metrics, "eval/fidelity", "eval/adherence"])
    return (
        f"**lorasweep study `{study.study_name}`.** The run `{sweep_run_name}` is the sweep: "
        "every trial is a child run nested under it (`trial-N`; open the row's arrow to list "
        "them). Its tags `best.trial` / `best.value` name the best trial, and its metric "
        f"`trials/{metrics[0]}` (step = trial number) is the optimisation history.\n\n"
        f"To compare trials, add the columns (Columns menu): {columns} (the best epoch's "
        "values are the per-epoch metrics' maxima: open a trial, Model metrics, step = epoch), "
        "and the parameters `sampled/*` (what Optuna chose). Each trial's tags "
        "`optuna.trial_state` and `lorasweep.best_epoch` say how it ended and which epoch to "
        "keep; its `lora/` artifact is that epoch's file.\n\n"
        "The research report (`python -m sweeper.report --study "
        f"{study.study_name}`) is logged on the sweep run under `report/`."
    )


def describe_in_ui(tracker: Tracker, study: optuna.Study) -> None:
    """The experiment's and the sweep run's descriptions (``mlflow.note.content``)."""
    run = tracker._call("read sweep run", "get_run", tracker.run_id)
    if run is None:
        return
    note = ui_note(study, run.info.run_name or study.study_name)
    tracker._call(
        "describe experiment",
        "set_experiment_tag",
        run.info.experiment_id,
        "mlflow.note.content",
        note,
    )
    tracker.set_tags({"mlflow.note.content": note})


def dashboard_url(tracker: Tracker, host: str = "http://127.0.0.1:5000") -> str | None:
    """The experiment's page in ``make ui``'s dashboard (embedded store only)."""
    if not tracker.active or not tracker.settings.uri.startswith("sqlite:"):
        return None
    run = tracker._call("read sweep run", "get_run", tracker.run_id)
    return f"{host}/#/experiments/{run.info.experiment_id}" if run is not None else None


def job_overrides(tracker: Tracker) -> list[str]:
    """The override that nests a job's run under the parent (nothing when tracking is off)."""
    return [f"+tracking.parent_run_id='{tracker.run_id}'"] if tracker.active else []


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def record_trial(tracker: Tracker, study: optuna.Study, number: int) -> None:
    """After a tell: the trial's values on the parent (``trials/<metric>`` at step = trial
    number, ``trials/best_value``), and its final Optuna state on its child run, which is
    ended here if its process died before it could end it."""
    if not tracker.active:
        return
    trial = _frozen(study, number)
    if trial is None:
        return
    names = study.metric_names or [f"value_{i}" for i in range(len(study.directions))]
    if trial.values:
        values = dict(zip((f"trials/{n}" for n in names), trial.values, strict=False))
        tracker.log_metrics(values, step=number)
    single = len(study.directions) == 1
    if single and any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = study.best_trial
        if best.value is not None and math.isfinite(best.value):
            tracker.log_metrics({"trials/best_value": best.value}, step=number)
        tracker.set_tags({"best.trial": best.number, "best.value": repr(best.value)})
    tracker.flush()
    child = trial.user_attrs.get(TRIAL_ATTR_RUN)
    if child:
        _close_child(tracker, child, trial)


def _close_child(tracker: Tracker, run_id: str, trial: optuna.trial.FrozenTrial) -> None:
    from mlflow.entities import RunTag

    tags = [RunTag("optuna.trial_state", trial.state.name)]
    if trial.user_attrs.get("fail_reason"):
        tags.append(RunTag("fail_reason", str(trial.user_attrs["fail_reason"])[:8000]))
    tracker._call("tag trial run", "log_batch", run_id, tags=tags)
    run = tracker._call("read trial run", "get_run", run_id)
    if run is not None and run.info.status == "RUNNING":
        status = "FAILED" if trial.state == TrialState.FAIL else "FINISHED"
        if str(trial.user_attrs.get("fail_reason", "")).startswith("interrupted"):
            status = "KILLED"
        tracker._call("end trial run", "set_terminated", run_id, status)


def close_dead_runs(tracker: Tracker, study: optuna.Study) -> list[int]:
    """End the trial runs left RUNNING under the parent by a process that died (SIGKILL, a
    power cut) once their Optuna trials have ended (failed as stale, or finished elsewhere):
    each gets its trial's final state, and the parent's best tags are set again. Returns the
    trial numbers whose runs were closed."""
    if not tracker.active:
        return []
    parent = tracker._call("read sweep run", "get_run", tracker.run_id)
    if parent is None:
        return []
    runs = tracker._call(
        "find running trial runs",
        "search_runs",
        [parent.info.experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{tracker.run_id}' and attributes.status = 'RUNNING'"
        ),
        max_results=1000,
    )
    closed = []
    for run in runs or []:
        number = run.data.tags.get("optuna.trial_number")
        trial = _frozen(study, int(number)) if number and number.isdigit() else None
        if trial is None or not trial.state.is_finished():
            continue
        _close_child(tracker, run.info.run_id, trial)
        closed.append(trial.number)
    if closed:
        _best_tags(tracker, study, max(closed))
    return closed


def _best_tags(tracker: Tracker, study: optuna.Study, step: int) -> None:
    if len(study.directions) != 1:
        return
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return
    best = study.best_trial
    tracker.set_tags({"best.trial": best.number, "best.value": repr(best.value)})


def finish_sweep_run(
    tracker: Tracker,
    summary: dict,
    results_path: Path | None,
    failed: bool = False,
    status: str | None = None,
) -> None:
    """The sweep's outcome on the parent: state counts, best trial(s), the results file; the
    run ends with ``status`` (FINISHED, FAILED, KILLED), FAILED if only ``failed`` is set."""
    if not tracker.active:
        return
    tags = {f"trials.{state}": n for state, n in summary.get("states", {}).items()}
    best = [summary["best"]] if "best" in summary else summary.get("pareto_front", [])
    tags["best.trials"] = ",".join(str(t["number"]) for t in best)
    tags["optuna.storage"] = hide_password(str(summary.get("storage", "")))
    tracker.set_tags(tags)
    if results_path is not None and Path(results_path).is_file():
        tracker.log_artifact(results_path)
    tracker.end(status or ("FAILED" if failed else "FINISHED"))


def log_report(tracker: Tracker, report: Path) -> None:
    """The research report on the parent run (``report/<file>``)."""
    tracker.log_artifact(report, "report")

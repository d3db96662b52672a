"""The report's sections, one function each: ``ReportData`` -> the plain values its template
(``templates/sections/<id>.html.j2``) shows. Nothing here writes HTML: the templates do, with
every value autoescaped."""

from __future__ import annotations

from typing import Any

from sweeper.report import plots
from sweeper.report.diagnose import diagnoses
from sweeper.report.figures import figure, fmt
from sweeper.report.gather import MIN_TRIALS_FOR_IMPORTANCE, ReportData, TrialInfo

_GRID_WIDTH = 480  # smaller grids are shown enlarged


def _params(trial: TrialInfo) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in sorted(trial.params.items()))


def _get(config: dict | None, dotted: str) -> Any:
    node: Any = config or {}
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _best_line(best: TrialInfo | None) -> str:
    if best is None:
        return "none completed"
    return f"{best.number}: {fmt(best.values)} at epoch {best.best_epoch}"


def keep_file(data: ReportData) -> tuple[str, str]:
    """The best trial's file to keep: its path, and where its MLflow run holds a copy."""
    best = data.best[0] if data.best else None
    if best is None or not best.best_file:
        return "none (no trial completed with a saved file)", "-"
    name = best.best_file.replace("\\", "/").rsplit("/", 1)[-1]
    logged = _get(data.config, "tracking.log_lora_files")
    if not best.run_id:
        where = "not tracked (no MLflow run for this trial)"
    elif logged == "none":
        where = f"not logged (tracking.log_lora_files=none) in run {best.run_id}"
    else:
        where = f"artifact lora/{name} of MLflow run {best.run_id}"
    return best.best_file, where


def _readers(data: ReportData) -> str:
    """Which programs read the best trial's file as it was evaluated (network.type may be
    swept, so the trial's own parameters come first)."""
    from trainer.networks.compat import reader_line

    params = data.best[0].params if data.best else {}

    def value(key: str):
        return params.get(f"network.{key}", _get(data.config, f"network.{key}"))

    if value("type") is None or (_get(data.config, "train.mode") or "lora") != "lora":
        return "- (not a LoRA sweep)"
    target = value("target_consumer") or "any"
    return reader_line(str(value("type")), str(target), value("alpha"), value("dim"))


def summary(data: ReportData) -> dict:
    best = data.best[0] if data.best else None
    keep, keep_where = keep_file(data)
    rows = [
        ("Study", data.study_name),
        ("Optuna storage", data.storage),
        ("Objectives", ", ".join(f"{m} ({d})" for m, d in zip(data.metrics, data.directions))),
        ("Trials", ", ".join(f"{n} {s.lower()}" for s, n in data.states.items())),
        ("Best trial", _best_line(best)),
        ("File to keep", keep),
        ("File to keep, in MLflow", keep_where),
        ("Programs that apply it as evaluated", _readers(data)),
        ("Base model", _get(data.config, "model.path") or _get(data.config, "model.name")),
        ("Training data", _get(data.config, "data.dir")),
        # A list: shown as bullets.
        ("Evaluation prompts", list(_get(data.config, "eval.prompts") or [])),
        ("Trigger", _get(data.config, "eval.trigger") or "(class token of the data folder)"),
        ("MLflow store", data.tracking.get("uri") or "not tracked"),
        ("MLflow parent run", data.tracking.get("parent_run_id") or "-"),
        ("Written", data.generated),
    ]
    random = any(e.random_weights for e in data.outputs.evals.values())
    return {"random_weights": random, "rows": rows}


def best_trials(data: ReportData) -> dict:
    best = {t.number for t in data.best}
    return {
        "metric": data.metrics[0],
        "headers": ["trial", *data.metrics, "best epoch", "parameters"],
        "rows": [[t.number, *(t.values or []), t.best_epoch, _params(t)] for t in data.ranked],
        "marked": [i for i, t in enumerate(data.ranked) if t.number in best],
    }


def all_trials(data: ReportData) -> dict:
    headers = ["trial", "state", *data.metrics, "best epoch", "pruned at", "parameters", "reason"]
    rows = []
    for t in data.trials:
        values = t.values or [None] * len(data.metrics)
        row = [t.number, t.state, *values, t.best_epoch, t.pruned_at, _params(t)]
        rows.append([*row, t.fail_reason])
    return {"headers": headers, "rows": rows}


def history(data: ReportData) -> dict:
    return {"plot": figure(plots.history(data), "optimisation history")}


def importance(data: ReportData) -> dict:
    rows = []
    for metric, values in (data.importances or {}).items():
        rows += [[metric, name, value] for name, value in values.items()]
    complete = data.states.get("COMPLETE", 0)
    view: dict[str, Any] = {"rows": rows, "note": data.importance_note}
    if rows:
        view |= {
            "plot": figure(plots.importances(data), "parameter importances"),
            "complete": complete,
            "minimum": MIN_TRIALS_FOR_IMPORTANCE,
            "too_few": complete < MIN_TRIALS_FOR_IMPORTANCE,
        }
    return view


def pareto(data: ReportData) -> dict:
    if not data.multi_objective:
        return {"multi_objective": False}
    return {
        "multi_objective": True,
        "plot": figure(plots.pareto(data), "Pareto front"),
        "headers": ["trial", *data.metrics, "best epoch", "parameters"],
        "rows": [[t.number, *(t.values or []), t.best_epoch, _params(t)] for t in data.best],
    }


def score_epoch(data: ReportData) -> dict:
    return {
        "metric": data.metrics[0],
        "plot": figure(plots.score_vs_epoch(data), "score vs epoch"),
    }


def score_strength(data: ReportData) -> dict:
    return {"plot": figure(plots.score_vs_strength(data), "score vs strength")}


def _best_evaluated_epoch(data: ReportData) -> int | None:
    """The best trial's best epoch if it was evaluated, else its last evaluated epoch."""
    evals = data.outputs.evals
    if not evals or not data.best:
        return None
    return data.best[0].best_epoch if data.best[0].best_epoch in evals else max(evals)


def _unet_te_table(data: ReportData) -> dict | None:
    epoch = _best_evaluated_epoch(data)
    if epoch is None:
        return None
    pairs = data.outputs.evals[epoch].objective_by_pair()
    unet = sorted({u for u, _ in pairs})
    te = sorted({t for _, t in pairs})
    return {
        "epoch": epoch,
        "headers": ["", *(f"TE {t:g}" for t in te)],
        "rows": [[f"UNet {u:g}", *(pairs.get((u, t)) for t in te)] for u in unet],
    }


def grids(data: ReportData) -> dict:
    out = data.outputs
    return {
        "epoch_grids": [figure(p.png, p.title, _GRID_WIDTH) for p in out.epoch_grids],
        "unet_te_grids": [figure(p.png, p.title, _GRID_WIDTH) for p in out.unet_te_grids],
        "pairs": _unet_te_table(data),
    }


def cross_checkpoint(data: ReportData) -> dict:
    epoch = _best_evaluated_epoch(data)
    if epoch is None:
        return {"epoch": None}
    evaluation = data.outputs.evals[epoch]
    cells = [c for c in evaluation.cells if c.get("unet") == 1.0 and c.get("te") == 1.0]
    names = sorted({k for c in cells for k in c.get("scores", {})})
    names.sort(key=lambda k: k != "objective")  # the objective first
    rows = [[c["checkpoint"], *(c["scores"].get(n) for n in names)] for c in cells]
    rows.append(["mean", *(evaluation.metrics.get(f"eval/{n}") for n in names)])
    return {
        "epoch": epoch,
        "headers": ["checkpoint", *names],
        "rows": rows,
        "one_checkpoint": len(cells) == 1,
    }


def diagnoses_section(data: ReportData) -> dict:
    keys = ("state", "best_strength", "best_unet_strength", "best_te_strength")
    rows = [
        [e, *(v.diagnosis.get(k) for k in keys), v.metrics.get("eval/objective")]
        for e, v in sorted(data.outputs.evals.items())
    ]
    return {"findings": diagnoses(data), "rows": rows}


def reproduce(data: ReportData) -> dict:
    if not data.best:
        return {"trial": None}
    best = data.best[0]
    prov = data.provenance
    dirty = prov.get("git.dirty") == "true"
    drift = prov.get("lock.drift", "none")
    commit = prov.get("git.commit", "<commit>")
    provenance = [
        (
            "git commit",
            prov.get("git.commit", "unknown") + (" (with uncommitted changes)" if dirty else ""),
        ),
        ("lock file (requirements.lock) sha256", prov.get("lock.sha256", "unknown")),
        ("installed packages vs the lock", "as locked" if drift == "none" else drift),
        ("data hash (sha256 of images + captions)", prov.get("data.hash", "unknown")),
        ("recorded", prov.get("source", "")),
    ]
    return {
        "trial": best.number,
        "metric": data.metrics[0],
        "value": repr(best.values[0]),
        "epoch": best.best_epoch,
        "command": best.command or "(no command recorded: the sweep's results file is missing)",
        "provenance": provenance,
        "rebuild": prov.get("environment.rebuild") or f"git checkout {commit} && make setup",
        "dirty": dirty,
        "drift": drift not in ("none", None),
        "versions": sorted(data.versions.items()),
    }

"""The report's sections, one function each: ``ReportData`` -> escaped HTML."""

from __future__ import annotations

from typing import Any

from sweeper.report import plots
from sweeper.report.diagnose import diagnoses
from sweeper.report.gather import MIN_TRIALS_FOR_IMPORTANCE, ReportData, TrialInfo
from sweeper.report.markup import Markup, bullets, fmt, heading, image, join, para, pre, table

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

    target = value("target_consumer") or "any"
    return reader_line(str(value("type")), str(target), value("alpha"), value("dim"))


def summary(data: ReportData) -> Markup:
    parts: list[str] = []
    if any(e.random_weights for e in data.outputs.evals.values()):
        parts.append(
            para(
                "Scores below come from RANDOM-WEIGHT scoring models (the offline `tiny` "
                "scorers): they exercise the pipeline and measure nothing.",
                "warn",
            )
        )
    best = data.best[0] if data.best else None
    rows = [
        ("Study", data.study_name),
        ("Optuna storage", data.storage),
        ("Objectives", ", ".join(f"{m} ({d})" for m, d in zip(data.metrics, data.directions))),
        ("Trials", ", ".join(f"{n} {s.lower()}" for s, n in data.states.items())),
        ("Best trial", _best_line(best)),
        ("File to keep", keep_file(data)[0]),
        ("File to keep, in MLflow", keep_file(data)[1]),
        ("Programs that apply it as evaluated", _readers(data)),
        ("Base model", _get(data.config, "model.path") or _get(data.config, "model.name")),
        ("Training data", _get(data.config, "data.dir")),
        ("Evaluation prompts", bullets(_get(data.config, "eval.prompts") or [])),
        ("Trigger", _get(data.config, "eval.trigger") or "(class token of the data folder)"),
        ("MLflow store", data.tracking.get("uri") or "not tracked"),
        ("MLflow parent run", data.tracking.get("parent_run_id") or "-"),
        ("Written", data.generated),
    ]
    parts.append(table(["", ""], rows))
    return join(parts)


def best_trials(data: ReportData) -> Markup:
    if not data.ranked:
        return para("No trial completed.", "note")
    best = {t.number for t in data.best}
    headers = ["trial", *data.metrics, "best epoch", "parameters"]
    rows = [[t.number, *(t.values or []), t.best_epoch, _params(t)] for t in data.ranked]
    marked = [i for i, t in enumerate(data.ranked) if t.number in best]
    note = para(
        f"The {len(data.ranked)} best complete trials by {data.metrics[0]}; highlighted: the "
        "best (the Pareto front when multi-objective).",
        "note",
    )
    return join([note, table(headers, rows, marked)])


def all_trials(data: ReportData) -> Markup:
    headers = ["trial", "state", *data.metrics, "best epoch", "pruned at", "parameters", "reason"]
    rows = []
    for t in data.trials:
        values = t.values or [None] * len(data.metrics)
        row = [t.number, t.state, *values, t.best_epoch, t.pruned_at, _params(t)]
        rows.append([*row, t.fail_reason])
    return table(headers, rows)


def history(data: ReportData) -> Markup:
    note = para(
        "Each trial's value (crosses: a pruned trial's last score) and the best so far.", "note"
    )
    return join([note, image(plots.history(data), "optimisation history")])


def importance(data: ReportData) -> Markup:
    if not data.importances:
        return para(f"Parameter importances: {data.importance_note or 'none'}.", "note")
    rows = []
    for metric, values in data.importances.items():
        rows += [[metric, name, value] for name, value in values.items()]
    parts = [
        para(
            "fANOVA importance (optuna.importance): the share of the objective's variance "
            "each searched parameter explains.",
            "note",
        ),
        image(plots.importances(data), "parameter importances"),
        table(["objective", "parameter", "importance"], rows),
    ]
    if data.importance_note:
        parts.append(para(data.importance_note, "note"))
    complete = data.states.get("COMPLETE", 0)
    if complete < MIN_TRIALS_FOR_IMPORTANCE:
        text = (
            f"These importances rest on {complete} complete trial{'s' * (complete != 1)} "
            f"(fewer than {MIN_TRIALS_FOR_IMPORTANCE}): too few to tell a parameter's effect "
            "from noise. Read them as a hint; run more trials before trusting them."
        )
        parts.insert(0, para(text, "warn"))
    return join(parts)


def pareto(data: ReportData) -> Markup:
    if not data.multi_objective:
        return para(
            "Single objective: the front is the best trial alone (see Best trials). Use "
            "search=pareto for a fidelity vs adherence front.",
            "note",
        )
    rows = [[t.number, *(t.values or []), t.best_epoch, _params(t)] for t in data.best]
    headers = ["trial", *data.metrics, "best epoch", "parameters"]
    return join([image(plots.pareto(data), "Pareto front"), table(headers, rows)])


def score_epoch(data: ReportData) -> Markup:
    note = para(
        f"{data.metrics[0]} at each evaluated epoch of every trial (dashed: pruned; red: best).",
        "note",
    )
    return join([note, image(plots.score_vs_epoch(data), "score vs epoch")])


def score_strength(data: ReportData) -> Markup:
    note = para(
        "The best trial's epochs at each LoRA strength (UNet = TE), for the epochs scored at "
        "every strength (eval.grid_epochs: best = the kept epoch only). A peak below 1.0 means "
        "over-trained, above 1.0 under-trained.",
        "note",
    )
    return join([note, image(plots.score_vs_strength(data), "score vs strength")])


def _unet_te_table(data: ReportData) -> Markup | None:
    evals = data.outputs.evals
    if not evals or not data.best:
        return None
    epoch = data.best[0].best_epoch if data.best[0].best_epoch in evals else max(evals)
    pairs = evals[epoch].objective_by_pair()
    unet = sorted({u for u, _ in pairs})
    te = sorted({t for _, t in pairs})
    rows = [[f"UNet {u:g}", *(pairs.get((u, t)) for t in te)] for u in unet]
    title = heading(f"eval/objective by UNet x TE strength, epoch {epoch}")
    return join([title, table(["", *(f"TE {t:g}" for t in te)], rows)])


def grids(data: ReportData) -> Markup:
    out = data.outputs
    parts: list[str] = [heading("Epoch x strength")]
    parts += [image(p.png, p.title, _GRID_WIDTH) for p in out.epoch_grids] or [
        para("No epoch x strength grid (eval.save_grids=false?).", "note")
    ]
    parts.append(heading("UNet x TE strength (best epoch)"))
    parts += [image(p.png, p.title, _GRID_WIDTH) for p in out.unet_te_grids] or [
        para("No UNet x TE grid (eval.unet_strengths / eval.te_strengths empty?).", "note")
    ]
    extra = _unet_te_table(data)
    if extra:
        parts.append(extra)
    return join(parts)


def cross_checkpoint(data: ReportData) -> Markup:
    evals = data.outputs.evals
    if not evals or not data.best:
        return para("No evaluation of the best trial.", "note")
    epoch = data.best[0].best_epoch if data.best[0].best_epoch in evals else max(evals)
    cells = [c for c in evals[epoch].cells if c.get("unet") == 1.0 and c.get("te") == 1.0]
    names = sorted({k for c in cells for k in c.get("scores", {})})
    names.sort(key=lambda k: k != "objective")  # the objective first
    rows = [[c["checkpoint"], *(c["scores"].get(n) for n in names)] for c in cells]
    means = evals[epoch].metrics
    rows.append(["mean", *(means.get(f"eval/{n}") for n in names)])
    note = para(
        f"The best trial's epoch {epoch} at strength 1.0 on each test checkpoint "
        "(eval.checkpoints; [] = the training model).",
        "note",
    )
    parts = [note, table(["checkpoint", *names], rows)]
    if len(cells) == 1:
        text = "One checkpoint only: add others to eval.checkpoints to see if the LoRA transfers."
        parts.append(para(text, "note"))
    return join(parts)


def diagnoses_section(data: ReportData) -> Markup:
    parts: list[str] = []
    for finding in diagnoses(data):
        parts.append(heading(finding.title, 4))
        parts.append(para(finding.text, "warn" if finding.warning else ""))
    evals = data.outputs.evals
    if evals:
        keys = ("state", "best_strength", "best_unet_strength", "best_te_strength")
        rows = [
            [e, *(v.diagnosis.get(k) for k in keys), v.metrics.get("eval/objective")]
            for e, v in sorted(evals.items())
        ]
        headers = ["epoch", "state", "best strength", "best UNet", "best TE", "eval/objective"]
        parts += [heading("Per epoch (best trial)", 4), table(headers, rows)]
    return join(parts)


def reproduce(data: ReportData) -> Markup:
    if not data.best:
        return para("No trial completed: nothing to reproduce.", "note")
    best = data.best[0]
    parts = [
        para(
            f"Trial {best.number} reached {data.metrics[0]} = {best.values[0]!r} at epoch "
            f"{best.best_epoch}. Run this in the project folder to train and evaluate it again "
            "as one run:"
        ),
        pre(best.command or "(no command recorded: the sweep's results file is missing)"),
    ]
    prov = data.provenance
    dirty = " (with uncommitted changes)" if prov.get("git.dirty") == "true" else ""
    drift = prov.get("lock.drift", "none")
    rows = [
        ("git commit", prov.get("git.commit", "unknown") + dirty),
        ("lock file (requirements.lock) sha256", prov.get("lock.sha256", "unknown")),
        ("installed packages vs the lock", "as locked" if drift == "none" else drift),
        ("data hash (sha256 of images + captions)", prov.get("data.hash", "unknown")),
        ("recorded", prov.get("source", "")),
    ]
    parts.append(table(["", ""], rows))
    parts.append(
        para(
            "The environment: a clone of the project at that commit, then this command "
            "(it installs the lock file's exact versions, and torch at the pinned version):"
        )
    )
    commit = prov.get("git.commit", "<commit>")
    parts.append(pre(prov.get("environment.rebuild") or f"git checkout {commit} && make setup"))
    if dirty:
        parts.append(
            para("The tree had uncommitted changes: the commit alone does not rebuild it.", "warn")
        )
    if drift not in ("none", None):
        parts.append(
            para(
                "The run's packages differed from the lock file (listed above): the rebuilt "
                "environment is the locked one, not the one that ran.",
                "warn",
            )
        )
    parts.append(heading("Package versions", 4))
    parts.append(table(["package", "version"], sorted(data.versions.items())))
    return join(parts)

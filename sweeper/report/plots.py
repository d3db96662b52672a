"""The report's plots, drawn with matplotlib (Agg, no display) into PNG bytes.

Each function returns None when there is nothing to draw. Figures are built with
``matplotlib.figure.Figure`` directly, never pyplot, so nothing global is touched.
"""

from __future__ import annotations

import io
import math

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweeper.report.gather import ReportData, TrialInfo

_SIZE = (7.0, 3.6)
_BEST, _OTHER, _PRUNED = "#c0392b", "#2c7fb8", "#999999"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=96, metadata={"Software": None})
    return buffer.getvalue()


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def history(data: ReportData) -> bytes | None:
    """Each trial's value by trial number (one panel per objective), and the best so far."""
    if not any(t.values for t in data.trials):
        return None
    fig = Figure(figsize=(_SIZE[0], _SIZE[1] * len(data.metrics)))
    axes = fig.subplots(len(data.metrics), 1, squeeze=False)[:, 0]
    for i, (ax, metric) in enumerate(zip(axes, data.metrics, strict=True)):
        done = [t for t in data.trials if t.values and _finite(t.values[i])]
        ax.scatter([t.number for t in done], [t.values[i] for t in done], c=_OTHER, label="trial")
        pruned = [(t.number, _last_score(t, metric)) for t in data.trials if t.state == "PRUNED"]
        pruned = [(n, v) for n, v in pruned if _finite(v)]
        if pruned:
            xs, ys = zip(*pruned, strict=True)
            ax.scatter(xs, ys, marker="x", c=_PRUNED, label="pruned (last score)")
        if len(data.metrics) == 1 and done:
            pick = max if data.directions[0] == "maximize" else min
            best, xs, ys = None, [], []
            for t in sorted(done, key=lambda t: t.number):
                best = t.values[0] if best is None else pick(best, t.values[0])
                xs.append(t.number)
                ys.append(best)
            ax.step(xs, ys, where="post", c=_BEST, label="best so far")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{metric} ({data.directions[i]})")
        ax.legend(loc="best", fontsize="small")
    return _png(fig)


def _last_score(trial: TrialInfo, metric: str) -> float | None:
    scored = [m[metric] for _, m in sorted(trial.epoch_metrics.items()) if metric in m]
    return scored[-1] if scored else None


def importances(data: ReportData) -> bytes | None:
    """fANOVA importance of each searched parameter, one panel per objective."""
    if not data.importances:
        return None
    n = len(data.importances)
    rows = max(len(v) for v in data.importances.values())
    fig = Figure(figsize=(_SIZE[0], 0.6 + 0.9 * n * rows))
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (metric, values) in zip(axes, data.importances.items(), strict=True):
        names = list(values)[::-1]
        ax.barh(names, [values[k] for k in names], color=_OTHER)
        ax.set_xlabel(f"importance for {metric}")
        ax.set_xlim(0, 1)
    return _png(fig)


def pareto(data: ReportData) -> bytes | None:
    """The first two objectives of every complete trial, the Pareto front highlighted."""
    if not data.multi_objective:
        return None
    done = [t for t in data.trials if t.values and all(_finite(v) for v in t.values[:2])]
    if not done:
        return None
    front = {t.number for t in data.best}
    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.subplots()
    for group, color, label in ((False, _OTHER, "trial"), (True, _BEST, "Pareto front")):
        pts = [t for t in done if (t.number in front) == group]
        if pts:
            xs, ys = [t.values[0] for t in pts], [t.values[1] for t in pts]
            ax.scatter(xs, ys, c=color, label=label)
    for t in done:
        ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize="x-small")
    ax.set_xlabel(f"{data.metrics[0]} ({data.directions[0]})")
    ax.set_ylabel(f"{data.metrics[1]} ({data.directions[1]})")
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def score_vs_epoch(data: ReportData) -> bytes | None:
    """The first objective at each evaluated epoch, one line per trial (pruned dashed)."""
    metric = data.metrics[0]
    lines = [t for t in data.trials if any(metric in m for m in t.epoch_metrics.values())]
    if not lines:
        return None
    best = {t.number for t in data.best}
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    for t in lines:
        points = [(e, m[metric]) for e, m in sorted(t.epoch_metrics.items()) if metric in m]
        xs, ys = zip(*points, strict=True)
        style = "--" if t.state == "PRUNED" else "-"
        color = _BEST if t.number in best else (_PRUNED if t.state == "PRUNED" else _OTHER)
        ax.plot(xs, ys, style, marker="o", color=color, alpha=0.85, label=f"trial {t.number}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    if len(lines) <= 12:
        ax.legend(loc="best", fontsize="x-small", ncol=2)
    return _png(fig)


def score_vs_strength(data: ReportData) -> bytes | None:
    """The objective at each LoRA strength (UNet = TE) for each epoch of the best trial that
    has the strength grid: a peak below 1.0 is over-training, above 1.0 under-training."""
    evals = data.outputs.evals
    curves = {}
    for epoch, evaluation in sorted(evals.items()):
        pairs = evaluation.objective_by_pair()
        diagonal = sorted((u, v) for (u, t), v in pairs.items() if u == t)
        if len(diagonal) > 1:  # epochs scored at 1.0 alone have no curve
            curves[epoch] = diagonal
    if not curves:
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    for epoch, diagonal in curves.items():
        xs, ys = zip(*diagonal, strict=True)
        ax.plot(xs, ys, marker="o", label=f"epoch {epoch}")
    ax.axvline(1.0, color=_PRUNED, linestyle=":", linewidth=1)
    ax.set_xlabel("LoRA strength (UNet = TE)")
    ax.set_ylabel("eval/objective")
    ax.legend(loc="best", fontsize="x-small")
    return _png(fig)

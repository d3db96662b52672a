"""The report's diagnoses, in the guide's terms (DOMAIN.md, "Testing a LoRA").

* Strength: a LoRA that looks best below strength 1.0 is over-trained, above 1.0 under-trained.
* UNet x TE: if the UNet works best at 0.5 with the TE at 1.0, halve the UNet learning rate;
  if the TE wants 2.0, double the TE learning rate.
* Epochs: a score that peaks before the last epoch means training went on too long; one still
  rising at the last epoch means it stopped too early.

The strength readings come from the evaluator's per-epoch diagnosis (``metrics.json``); the
advice names the learning rates of the best trial's config, before and after the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeper.report.gather import ReportData

_ADAPTIVE = ("prodigy", "dadapt")


@dataclass
class Finding:
    title: str
    text: str
    warning: bool = False


def _factor_words(factor: float) -> str:
    if factor == 0.5:
        return "halve"
    if factor == 2.0:
        return "double"
    return f"multiply by {factor:g}"


def _lr(config: dict | None, part: str) -> tuple[float | None, bool]:
    """The configured learning rate of ``part`` (unet / text_encoder) and whether it is an
    adaptive optimizer's multiplier rather than a step size."""
    opt = (config or {}).get("optimizer") or {}
    adaptive = any(str(opt.get("name", "")).lower().startswith(a) for a in _ADAPTIVE)
    value = opt.get(f"{part}_lr")
    if value is None:
        value = opt.get("lr")
    return (float(value) if isinstance(value, int | float) else None), adaptive


def _lr_advice(config: dict | None, part: str, label: str, factor: float) -> str:
    words = _factor_words(factor)
    lr, adaptive = _lr(config, part)
    if lr is None:
        return f"{label}: best at strength {factor:g}: {words} the {label} learning rate."
    what = "learning-rate multiplier (adaptive optimizer)" if adaptive else "learning rate"
    return (
        f"{label}: best at strength {factor:g}: {words} the {label} {what}: "
        f"{lr:.3g} -> {lr * factor:.3g}."
    )


def _strength_finding(epoch: int, diagnosis: dict[str, Any]) -> Finding:
    state, best = diagnosis.get("state", "?"), diagnosis.get("best_strength")
    if state == "over-trained":
        text = (
            f"Epoch {epoch} scores best at strength {best:g} < 1.0: over-trained. Keep an "
            "earlier epoch, train fewer steps, or lower the learning rates."
        )
    elif state == "under-trained":
        text = (
            f"Epoch {epoch} scores best at strength {best:g} > 1.0: under-trained. Train "
            "longer or raise the learning rates."
        )
    elif best is None:
        text = (
            f"Epoch {epoch} was scored at strength 1.0 only (eval.grid_epochs, or a pruned "
            "run): no reading of over- or under-training. Set eval.grid_epochs=best or all."
        )
    else:
        text = f"Epoch {epoch} scores best at strength 1.0: it works as trained."
    return Finding("Training state (strength)", text, warning=state != "well-trained")


def _epoch_trend(data: ReportData) -> Finding | None:
    best = data.best[0]
    metric = data.metrics[0]
    series = {e: m[metric] for e, m in sorted(best.epoch_metrics.items()) if metric in m}
    if len(series) < 2 or best.best_epoch is None:
        return None
    last = max(series)
    if best.best_epoch < last:
        return Finding(
            "Training length (epochs)",
            f"{metric} peaks at epoch {best.best_epoch} ({series[best.best_epoch]:.6g}) and is "
            f"{series[last]:.6g} at the last epoch {last}: training went past its best. Keep "
            f"epoch {best.best_epoch}'s file, or train about {best.best_epoch}/{last} of the "
            "steps.",
            warning=True,
        )
    epochs = sorted(series)
    rising = (series[epochs[-1]] > series[epochs[-2]]) == (data.directions[0] == "maximize")
    if rising:
        return Finding(
            "Training length (epochs)",
            f"{metric} is still improving at the last epoch {last}: probably under-trained; "
            "train more epochs or steps.",
            warning=True,
        )
    return None


def diagnoses(data: ReportData) -> list[Finding]:
    """Findings for the best trial (the first of the Pareto front when several)."""
    if not data.best:
        return [Finding("No result", "No trial completed: nothing to diagnose.", True)]
    findings: list[Finding] = []
    evals = data.outputs.evals
    if any(e.random_weights for e in evals.values()):
        findings.append(
            Finding(
                "Scores are not real",
                "The scoring models had random weights (eval.clip_model / eval.dino_model = "
                "tiny): every fidelity and adherence number here measures nothing. Use real "
                "scorers (e.g. eval=dreambench) before trusting any conclusion.",
                warning=True,
            )
        )
    best = data.best[0]
    epoch = best.best_epoch if best.best_epoch in evals else max(evals, default=None)
    if epoch is None:
        findings.append(Finding("No evaluation", "The best trial has no evaluation outputs."))
    else:
        diagnosis = evals[epoch].diagnosis
        findings.append(_strength_finding(epoch, diagnosis))
        findings += _balance_findings(data, diagnosis)
    trend = _epoch_trend(data)
    if trend:
        findings.append(trend)
    return findings


def _balance_findings(data: ReportData, diagnosis: dict[str, Any]) -> list[Finding]:
    unet, te = diagnosis.get("best_unet_strength"), diagnosis.get("best_te_strength")
    if unet is None or te is None:
        return []
    advice = []
    if unet != 1.0:
        advice.append(_lr_advice(data.config, "unet", "UNet", unet))
    if te != 1.0:
        advice.append(_lr_advice(data.config, "text_encoder", "TE", te))
    if not advice:
        text = "The UNet x TE grid is best at (1.0, 1.0): the two learning rates are balanced."
        return [Finding("UNet / TE balance", text)]
    return [Finding("UNet / TE balance", " ".join(advice), warning=True)]

"""The report's diagnoses, in the guide's terms (DOMAIN.md, "Testing a LoRA").

* Strength: a LoRA that looks best below strength 1.0 is over-trained, above 1.0 under-trained.
* UNet x TE: if the UNet works best at 0.5 with the TE at 1.0, halve the UNet learning rate;
  if the TE wants 2.0, double the TE learning rate.
* Epochs: a score that peaks before the last epoch means training went on too long; one still
  rising at the last epoch means it stopped too early.

The strength readings come from the evaluator's per-epoch diagnosis (``metrics.json``); the
advice names the learning rates of the best trial's config, before and after the change.

The readings can disagree (the overall strength says "under-trained: raise the learning
rates" while the UNet x TE grid says "the UNet is best at 0.5: lower its rate"). One
**recommendation** reconciles them, with its evidence: the grid scores the UNet and the text
encoder separately, so it decides each part's learning rate; the overall strength decides only
where there is no grid; the epoch to keep is the best epoch's. Every finding computed from
random-weight scorers says so on its own line.
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


RANDOM_CAVEAT = "[random-weight scorers: this reading measures nothing] "


def diagnoses(data: ReportData) -> list[Finding]:
    """Findings for the best trial (the first of the Pareto front when several): one
    reconciled recommendation first, then the readings it rests on."""
    if not data.best:
        return [Finding("No result", "No trial completed: nothing to diagnose.", True)]
    findings: list[Finding] = []
    evals = data.outputs.evals
    random = any(e.random_weights for e in evals.values())
    if random:
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
    readings: list[Finding] = []
    diagnosis: dict[str, Any] = {}
    if epoch is None:
        readings.append(Finding("No evaluation", "The best trial has no evaluation outputs."))
    else:
        diagnosis = evals[epoch].diagnosis
        readings.append(_strength_finding(epoch, diagnosis))
        readings += _balance_findings(data, diagnosis)
    trend = _epoch_trend(data)
    if trend:
        readings.append(trend)
    advice = recommendation(data, epoch, diagnosis)
    if advice:
        readings.insert(0, advice)
    evaluated = any(m.startswith("eval/") for m in data.metrics)
    for finding in readings:
        if random and (finding.title != "Training length (epochs)" or evaluated):
            finding.text = RANDOM_CAVEAT + finding.text
    return findings + readings


def _grid_strengths(config: dict | None, key: str) -> list[float]:
    values = ((config or {}).get("eval") or {}).get(key) or []
    return [float(v) for v in values if isinstance(v, int | float)]


def _part_factors(
    diagnosis: dict[str, Any], config: dict | None
) -> tuple[float, float, str, list[str]]:
    """The learning-rate factor of the UNet and of the TE, which reading decided them, and the
    parts the grid could not judge (it kept them at 1.0 but tested nothing on the side the
    overall strength reading points to: those follow the overall reading)."""
    unet, te = diagnosis.get("best_unet_strength"), diagnosis.get("best_te_strength")
    best = diagnosis.get("best_strength")
    overall = (
        float(best)
        if diagnosis.get("state") in ("over-trained", "under-trained") and best is not None
        else None
    )
    if unet is None or te is None:
        if overall is not None:
            return overall, overall, "strength", []
        return 1.0, 1.0, "none", []
    factors = {"UNet": float(unet), "TE": float(te)}
    untested = []
    if overall is not None:
        for label, key in (("UNet", "unet_strengths"), ("TE", "te_strengths")):
            tested = _grid_strengths(config, key)
            beyond = [s for s in tested if (s - 1.0) * (overall - 1.0) > 0]
            if factors[label] == 1.0 and tested and not beyond:
                factors[label] = overall
                untested.append(label)
    return factors["UNet"], factors["TE"], "grid", untested


def _change(config: dict | None, part: str, label: str, factor: float) -> str | None:
    if factor == 1.0:
        return None
    lr, adaptive = _lr(config, part)
    what = f"{label} learning-rate multiplier" if adaptive else f"{label} learning rate"
    words = _factor_words(factor)
    if words.startswith("multiply"):
        phrase = f"multiply the {what} by {factor:g}"
    else:
        phrase = f"{words} the {what}"
    return phrase if lr is None else f"{phrase} ({lr:.3g} -> {lr * factor:.3g})"


def recommendation(data: ReportData, epoch: int | None, diagnosis: dict[str, Any]) -> Finding:
    """What to do, in one place: the file to keep and each part's learning rate, with the
    readings it rests on and how their disagreements were settled."""
    best = data.best[0]
    keep = best.best_epoch if best.best_epoch is not None else epoch
    actions = [f"keep epoch {keep}'s file"] if keep is not None else []
    evidence: list[str] = []
    unet, te, source, untested = _part_factors(diagnosis, data.config)
    changes = [
        c
        for c in (
            _change(data.config, "unet", "UNet", unet),
            _change(data.config, "text_encoder", "TE", te),
        )
        if c
    ]
    actions += changes
    state, strength = diagnosis.get("state"), diagnosis.get("best_strength")
    if source == "grid":
        grid_unet = diagnosis.get("best_unet_strength")
        grid_te = diagnosis.get("best_te_strength")
        evidence.append(
            f"the UNet x TE grid of epoch {epoch} is best at UNet {grid_unet:g}, TE {grid_te:g}"
        )
        overall = {"over-trained": "lower", "under-trained": "raise"}.get(str(state))
        if untested:
            side = "above" if overall == "raise" else "below"
            evidence.append(
                f"the grid tested no strength {side} 1.0 for the {' and '.join(untested)}, so "
                f"the overall strength reading (best at {strength:g}: {state}) decides there"
            )
        if overall and strength is not None:
            # A part contradicts the overall reading when the grid keeps its rate or moves it
            # the other way.
            contradicts = [
                label
                for label, factor in (("UNet", unet), ("TE", te))
                if label not in untested and (factor - 1.0) * (strength - 1.0) <= 0
            ]
            if contradicts:
                evidence.append(
                    f"the overall strength reading (best at {strength:g}: {state}, which would "
                    f"{overall} both rates) is overruled for the {' and '.join(contradicts)} by "
                    "the grid, which scores the two parts separately"
                )
            elif not untested:
                evidence.append(f"the overall strength reading ({state}) agrees")
    elif source == "strength":
        evidence.append(f"epoch {epoch} scores best at strength {strength:g} ({state})")
    elif state == "well-trained":
        evidence.append(f"epoch {epoch} scores best at strength 1.0 (as trained)")
    metric = data.metrics[0]
    series = {e: m[metric] for e, m in sorted(best.epoch_metrics.items()) if metric in m}
    if len(series) >= 2 and keep is not None and keep in series:
        last = max(series)
        if keep < last:
            evidence.append(f"{metric} peaks at epoch {keep} of {last}")
            if not changes:
                actions[0] += f" (or train about {keep}/{last} of the steps)"
        elif not any(f < 1.0 for f in (unet, te)):
            epochs = sorted(series)
            rising = (series[epochs[-1]] > series[epochs[-2]]) == (
                data.directions[0] == "maximize"
            )
            if rising:
                evidence.append(f"{metric} still improves at the last epoch {last}")
                actions.append("train more steps")
    if not actions:
        return Finding("Recommendation", "Nothing to change.")
    text = "; ".join(actions)
    text = text[0].upper() + text[1:] + "."
    if evidence:
        text += " Evidence: " + "; ".join(evidence) + "."
    return Finding("Recommendation", text, warning=bool(changes))


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

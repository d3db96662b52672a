"""The one number a sweep maximises, and what the strength grid says about training.

Objective (at UNet and TE strength 1.0, the LoRA as trained, averaged over the test
checkpoints)::

    fidelity  = mean of the enabled fidelity scores  clip_i, dino, face_identity
    adherence = clip_t                                (raw prompt-image cosine)
    objective = w * fidelity + (1 - w) * adherence     w = eval.objective.fidelity_weight

With only fidelity or only adherence enabled, the objective is that term; with neither, it is
``-val_loss`` (higher is always better).

Why raw cosines and w = 0.5: DreamBench's users notice a DINO gap of about 0.1 and a CLIP-T gap
of about 0.05 (DOMAIN.md). A noticeable likeness gain (fidelity +0.1) then moves the objective
by 0.05 and a noticeable adherence gain (+0.05) by 0.025: the same order, so neither side wins
by scale alone. Raise w for identity-critical subjects (faces), lower it for styles.
Over-training raises fidelity and lowers adherence; the objective peaks between them.

Diagnostics (DOMAIN.md, "Testing a LoRA"): the strength s (UNet = TE = s) where the objective
is highest; best < 1.0 means the LoRA is over-trained (it must be weakened to look right),
> 1.0 under-trained. The best (UNet, TE) pair suggests the learning-rate ratio: UNet best at
0.5 with TE at 1.0 -> halve the UNet LR; TE best at 2.0 -> double the TE LR.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FIDELITY_METRICS = ("clip_i", "dino", "face_identity")
ADHERENCE_METRIC = "clip_t"
# Strengths whose objectives differ by less than this are ties, resolved towards 1.0 (a flat
# curve says nothing about over- or under-training). 0.01 is a fifth of the smallest change
# users notice (a CLIP-T gap of 0.05 moves the objective by 0.025, a DINO gap of 0.1 by 0.05;
# see above): below it, reading "over-trained" off a peak at 0.75 is reading noise. (The world's
# demo sweep: 0.650 at 0.75 against 0.644 at 1.0 was called over-trained with 1e-6.)
TIE_TOLERANCE = 0.01
TRAINING_STATES = {"over-trained": -1.0, "well-trained": 0.0, "under-trained": 1.0}
# What Diagnosis.metrics() can hold: read from the strength grid, absent without it.
DIAGNOSIS_METRICS = (
    "best_strength",
    "training_state",
    "best_unet_strength",
    "best_te_strength",
    "suggested_unet_lr_factor",
    "suggested_te_lr_factor",
)
# An epoch scored at strength 1.0 alone (``eval.grid_epochs`` skipped its strength grid).
NOT_MEASURED = "not measured"


def objective_terms(scores: Mapping[str, float], fidelity_weight: float) -> dict[str, float]:
    """``fidelity``, ``adherence`` (when available) and ``objective`` from one cell's scores."""
    fidelity_scores = [scores[m] for m in FIDELITY_METRICS if m in scores]
    out: dict[str, float] = {}
    if fidelity_scores:
        out["fidelity"] = sum(fidelity_scores) / len(fidelity_scores)
    if ADHERENCE_METRIC in scores:
        out["adherence"] = scores[ADHERENCE_METRIC]
    if "fidelity" in out and "adherence" in out:
        w = fidelity_weight
        out["objective"] = w * out["fidelity"] + (1.0 - w) * out["adherence"]
    elif out:
        out["objective"] = next(iter(out.values()))
    elif "val_loss" in scores:
        out["objective"] = -scores["val_loss"]
    return out


def _best(candidates: Iterable[tuple[tuple[float, ...], float]]) -> tuple[float, ...]:
    """The key with the highest value; among ties, the one closest to all-1.0."""
    items = list(candidates)
    top = max(value for _, value in items)
    tied = [key for key, value in items if top - value <= TIE_TOLERANCE]
    return min(tied, key=lambda key: (sum(abs(k - 1.0) for k in key), key))


@dataclass
class Diagnosis:
    best_strength: float | None
    state: str
    best_unet_strength: float | None = None
    best_te_strength: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def unet_lr_factor(self) -> float | None:
        return self.best_unet_strength

    @property
    def te_lr_factor(self) -> float | None:
        return self.best_te_strength

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.best_strength is not None:
            out["best_strength"] = self.best_strength
            out["training_state"] = TRAINING_STATES[self.state]
        if self.best_unet_strength is not None:
            out["best_unet_strength"] = self.best_unet_strength
            out["best_te_strength"] = self.best_te_strength
            out["suggested_unet_lr_factor"] = self.unet_lr_factor
            out["suggested_te_lr_factor"] = self.te_lr_factor
        return out


def _state(best: float) -> tuple[str, str]:
    if best < 1.0:
        return "over-trained", (
            f"best at strength {best:g} < 1.0: over-trained; use an earlier epoch, fewer "
            "steps or a lower learning rate"
        )
    if best > 1.0:
        return "under-trained", (
            f"best at strength {best:g} > 1.0: under-trained; train longer or raise the "
            "learning rate"
        )
    return "well-trained", "best at strength 1.0: the LoRA works as trained"


def _lr_note(part: str, best: float) -> str | None:
    if best == 1.0:
        return None
    verb = "lower" if best < 1.0 else "raise"
    return f"{part} best at {best:g}: {verb} the {part} learning rate about x{best:g}"


def diagnose(
    objective_by_pair: Mapping[tuple[float, float], float],
    strengths: Iterable[float],
    unet_strengths: Iterable[float] = (),
    te_strengths: Iterable[float] = (),
) -> Diagnosis:
    """Read the strength grid: best diagonal strength, best (UNet, TE) pair, and advice.

    Strengths missing from ``objective_by_pair`` are left out; with no strength but 1.0 there
    is nothing to read, and the state is ``not measured``.
    """
    diagonal = [
        (s, objective_by_pair[(s, s)]) for s in {*strengths, 1.0} if (s, s) in objective_by_pair
    ]
    if len(diagonal) < 2:
        note = "scored at strength 1.0 only on the diagonal: no strength reading"
        diagnosis = Diagnosis(best_strength=None, state=NOT_MEASURED, notes=[note])
    else:
        (best,) = _best(((s,), v) for s, v in diagonal)
        state, note = _state(best)
        diagnosis = Diagnosis(best_strength=best, state=state, notes=[note])
    grid = [(u, t) for u in unet_strengths for t in te_strengths]
    if grid and all(p in objective_by_pair for p in grid):
        pairs = [(p, objective_by_pair[p]) for p in {*grid, (1.0, 1.0)}]
        u, t = _best(pairs)
        diagnosis.best_unet_strength, diagnosis.best_te_strength = u, t
        diagnosis.notes += [n for n in (_lr_note("UNet", u), _lr_note("TE", t)) if n]
    return diagnosis

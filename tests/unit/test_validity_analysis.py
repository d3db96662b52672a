"""The validity benchmark's analysis: oracle quality, agreement, the replayed default sweep."""

from __future__ import annotations

import json

import pytest

from bench.validity import (
    ADHERENCE,
    OBJECTIVE,
    SUBJECT,
    RunRecord,
    _met,
    agreement,
    objective_state,
    oracle_best_strength,
    oracle_quality,
    oracle_state,
    oracle_tied_epochs,
    read_trial,
    replay,
    search_defaults,
)
from evaluators.objective import TIE_TOLERANCE

STRENGTHS = (0.5, 1.0, 1.5)


def _set_state(metrics: dict, state: int) -> None:
    """The objective at strengths 0.5 and 1.5 that the diagnosis reads as ``state`` (-1
    over-trained: best at 0.5; 1 under-trained: best at 1.5; 0: best at 1.0)."""
    objective = metrics[OBJECTIVE]
    metrics[f"{OBJECTIVE}@unet0.5_te0.5"] = objective + (0.1 if state == -1 else -0.1)
    metrics[f"{OBJECTIVE}@unet1.5_te1.5"] = objective + (0.1 if state == 1 else -0.1)


def _metrics(objective: float, subject: float, adherence: float, state: int = 0, **at) -> dict:
    out = {OBJECTIVE: objective, SUBJECT: subject, ADHERENCE: adherence}
    _set_state(out, state)
    for strength, (s, a) in at.items():
        label = {"low": 0.5, "high": 1.5}[strength]
        out[f"{SUBJECT}@unet{label!r}_te{label!r}"] = s
        out[f"{ADHERENCE}@unet{label!r}_te{label!r}"] = a
    return out


def _run(lr: float, dim: int, curve: list[tuple[float, float, float]]) -> RunRecord:
    record = RunRecord({"optimizer.unet_lr": lr, "network.dim": float(dim)})
    for epoch, (obj, subject, adherence) in enumerate(curve, start=1):
        record.epochs[epoch] = _metrics(obj, subject, adherence, low=(0.1, 0.9), high=(0.2, 0.5))
    return record


def test_oracle_quality_multiplies_subject_and_adherence_at_a_strength():
    m = _metrics(0.3, 0.8, 0.5, low=(0.4, 1.0), high=(1.0, 0.2))
    assert oracle_quality(m) == pytest.approx(0.4)
    assert oracle_quality(m, 0.5) == pytest.approx(0.4)
    assert oracle_quality(m, 1.5) == pytest.approx(0.2)
    assert oracle_best_strength(m, STRENGTHS) == 1.0  # tie at 0.5 and 1.0: nearest 1.0 wins
    m[f"{SUBJECT}@unet0.5_te0.5"] = 0.9
    assert oracle_best_strength(m, STRENGTHS) == 0.5
    # The scorer's own success rate (subject and every attribute per image) is preferred.
    m["eval/oracle_success"] = 0.1
    assert oracle_quality(m) == 0.1
    assert [oracle_state(s) for s in STRENGTHS] == [-1, 0, 1]


def test_agreement_is_perfect_when_the_objective_orders_points_as_the_oracle_does():
    runs = [
        _run(1e-4, 4, [(0.1, 0.2, 0.9), (0.2, 0.5, 0.9), (0.3, 0.9, 0.8)]),
        _run(1e-3, 4, [(0.25, 0.8, 0.6), (0.15, 0.9, 0.3), (0.05, 1.0, 0.1)]),
    ]
    result = agreement(runs, STRENGTHS)
    assert result.points == 6 and result.runs == 2
    assert result.spearman == pytest.approx(1.0)
    assert result.epoch_within_one == 1.0
    # The objective's kept epochs (3 and 1) peak at strength 1.0 and so does the oracle.
    assert result.strength_agrees == 1.0


def test_the_diagnosis_is_read_again_with_todays_tie_rule():
    """A grid read back (``--reuse``) is judged by the current diagnosis, not the state it
    recorded: a peak at 0.5 by less than the tie tolerance is no reading of over-training."""
    run = _run(1e-3, 4, [(0.3, 0.9, 0.9)])
    metrics = run.epochs[1]
    metrics["eval/training_state"] = -1.0  # what a run under the old rule recorded
    metrics[f"{OBJECTIVE}@unet0.5_te0.5"] = 0.3 + TIE_TOLERANCE / 2
    assert objective_state(metrics, STRENGTHS) == 0
    assert agreement([run], STRENGTHS).strength_agrees == 1.0  # the oracle: 1.0 too
    metrics[f"{OBJECTIVE}@unet0.5_te0.5"] = 0.3 + 2 * TIE_TOLERANCE
    assert objective_state(metrics, STRENGTHS) == -1
    assert agreement([run], STRENGTHS).strength_agrees == 0.0
    # Scored at 1.0 alone: no reading, left out.
    assert objective_state({OBJECTIVE: 0.3}, STRENGTHS) is None


def test_agreement_notices_an_objective_that_disagrees_with_the_oracle():
    runs = [
        _run(1e-4, 4, [(0.3, 0.2, 0.9), (0.2, 0.5, 0.9), (0.1, 0.9, 0.8), (0.0, 0.95, 0.9)]),
        _run(1e-3, 4, [(0.05, 0.8, 0.6), (0.15, 0.9, 0.3), (0.25, 1.0, 0.1), (0.3, 1.0, 0.05)]),
    ]
    _set_state(runs[0].epochs[1], -1)  # says over-trained; the oracle says 1.0
    # Kept epoch 4 of the second run: the oracle prefers 1.5 (0.1 > 0.09 > 0.05): under-trained.
    _set_state(runs[1].epochs[4], 1)
    result = agreement(runs, STRENGTHS)
    assert result.spearman < 0
    assert result.epoch_within_one == 0.0  # kept 1 vs oracle 4; kept 4 vs oracle 1
    assert result.strength_agrees == 0.5


def test_epochs_the_oracle_cannot_tell_apart_count_as_its_best():
    # Qualities (subject x adherence 1.0): 0.50, 0.76, 0.83, 0.79 on 24 images: the standard
    # error at 0.83 is 0.077, so 0.79 (epoch 4) and 0.76 (epoch 2) tie with epoch 3; 0.50 not.
    run = _run(1e-3, 4, [(0.9, 0.50, 1.0), (0.1, 0.76, 1.0), (0.2, 0.83, 1.0), (0.3, 0.79, 1.0),
                         (0.4, 0.30, 1.0), (0.5, 0.30, 1.0)])  # fmt: skip
    assert oracle_tied_epochs(run, 24) == [2, 3, 4]
    assert oracle_tied_epochs(run, 10_000) == [3]
    # The objective keeps epoch 1: within one of the tie at 2 (not of the single best, 3).
    result = agreement([run], STRENGTHS, images=24)
    assert result.epoch_within_one == 0.0 and result.epoch_within_one_of_ties == 1.0
    # A run the oracle finds nothing in (0 everywhere): every epoch ties.
    broken = _run(1e-2, 4, [(0.1 * e, 0.0, 0.3) for e in range(1, 7)])
    assert oracle_tied_epochs(broken, 24) == [1, 2, 3, 4, 5, 6]
    assert agreement([broken], STRENGTHS).epoch_within_one_of_ties != 1.0  # nan: no images


def _grid() -> list[RunRecord]:
    runs = []
    for i, lr in enumerate((1e-4, 1e-3, 1e-2)):
        for j, dim in enumerate((4, 16)):
            base = 0.1 * (i + j)
            curve = [(base + 0.01 * e, 0.5, 0.5) for e in range(4)]
            runs.append(_run(lr, dim, curve))
    return runs


def test_replay_is_deterministic_and_counts_only_what_it_trained():
    runs = _grid()
    sampler, pruner = search_defaults()
    first = replay(runs, 0, 5, sampler, pruner)
    again = replay(runs, 0, 5, sampler, pruner)
    assert (first.pick, first.pick_epoch, first.epochs_trained) == (
        again.pick, again.pick_epoch, again.epochs_trained
    )  # fmt: skip
    assert first.complete + first.pruned == 5
    assert first.epochs_trained <= 5 * 4
    assert first.epochs_trained >= first.complete * 4  # complete trials trained every epoch
    assert first.pick in {r.key for r in runs}
    assert first.pick_epoch == 4  # every curve rises: its last epoch is kept


def test_replay_without_pruner_over_the_whole_grid_finds_the_grid_best():
    runs = _grid()
    sampler = {"name": "random", "args": {}}
    result = replay(runs, 3, 40, sampler, {"name": "none", "args": {}})
    assert result.pruned == 0
    best = max(runs, key=lambda r: r.objective(4))
    assert result.pick == best.key


def test_read_trial_reads_every_epoch_folder(tmp_path):
    for epoch, value in ((1, 0.1), (2, 0.4)):
        folder = tmp_path / "eval" / f"epoch-{epoch:06d}"
        folder.mkdir(parents=True)
        payload = {"metrics": {OBJECTIVE: value, SUBJECT: 1.0, "eval/note": "text"}}
        (folder / "metrics.json").write_text(json.dumps(payload))
    record = read_trial({"params": {"network.dim": 8}, "output_dir": str(tmp_path)})
    assert record.params == {"network.dim": 8.0}
    assert sorted(record.epochs) == [1, 2]
    assert record.epochs[2][OBJECTIVE] == 0.4
    assert "eval/note" not in record.epochs[1]


def test_met_reads_the_target():
    assert _met(0.81, ">= 80%") == "yes"
    assert _met(0.79, ">= 80%") == "NO"
    assert _met(0.05, "< 10%") == "yes"
    assert _met(0.71, ">= 0.7") == "yes"
    assert _met(float("nan"), ">= 0.7") == "n/a"

"""The objective formula, the strength-grid diagnosis and the flat metric names."""

from __future__ import annotations

import re

import pytest

from evaluators.objective import diagnose, objective_terms
from evaluators.results import flat_metrics, mlflow_safe_name, strength_label


def test_objective_is_weighted_mean_of_fidelity_and_adherence():
    scores = {"clip_i": 0.8, "dino": 0.6, "clip_t": 0.3, "val_loss": 0.1}
    terms = objective_terms(scores, 0.5)
    assert terms["fidelity"] == pytest.approx(0.7)
    assert terms["adherence"] == pytest.approx(0.3)
    assert terms["objective"] == pytest.approx(0.5)
    assert objective_terms(scores, 0.8)["objective"] == pytest.approx(0.8 * 0.7 + 0.2 * 0.3)
    with_face = objective_terms({**scores, "face_identity": 0.4}, 0.5)
    assert with_face["fidelity"] == pytest.approx(0.6)


def test_objective_falls_back_to_the_enabled_side_then_to_minus_val_loss():
    assert objective_terms({"clip_t": 0.3}, 0.5)["objective"] == 0.3
    assert objective_terms({"dino": 0.7}, 0.5)["objective"] == 0.7
    assert objective_terms({"val_loss": 0.12}, 0.5) == {"objective": -0.12}


def _grid(best_unet: float, best_te: float) -> dict:
    """Objective of every evaluated cell, peaking at (best_unet, best_te)."""
    cells = {(x, x) for x in (0.25, 0.5, 1.0, 1.5)}
    cells |= {(u, t) for u in (0.5, 1.0) for t in (0.5, 1.0, 2.0)}
    return {(u, t): -((u - best_unet) ** 2) - (t - best_te) ** 2 for u, t in cells}


@pytest.mark.parametrize(
    ("best", "state"), [(0.5, "over-trained"), (1.5, "under-trained"), (1.0, "well-trained")]
)
def test_best_strength_tells_over_or_under_training(best, state):
    d = diagnose(_grid(best, best), [0.25, 0.5, 1.0, 1.5], [0.5, 1.0], [0.5, 1.0, 2.0])
    assert d.best_strength == best and d.state == state
    assert d.metrics()["training_state"] == {"over-trained": -1, "well-trained": 0}.get(state, 1)


def test_best_unet_te_pair_suggests_the_learning_rate_ratio():
    d = diagnose(_grid(0.5, 1.0), [0.5, 1.0], [0.5, 1.0], [0.5, 1.0, 2.0])
    assert (d.best_unet_strength, d.best_te_strength) == (0.5, 1.0)
    assert d.metrics()["suggested_unet_lr_factor"] == 0.5
    assert any("UNet" in n and "x0.5" in n for n in d.notes)
    d = diagnose(_grid(1.0, 2.0), [0.5, 1.0], [0.5, 1.0], [0.5, 1.0, 2.0])
    assert d.metrics()["suggested_te_lr_factor"] == 2.0
    assert any("raise the TE" in n for n in d.notes)


def test_a_flat_curve_is_read_as_well_trained():
    flat = {(s, s): 0.5 for s in (0.25, 0.5, 1.0, 1.5)}
    assert diagnose(flat, [0.25, 0.5, 1.0, 1.5]).best_strength == 1.0


def test_flat_metrics_average_checkpoints_and_name_each_strength():
    scores = {
        ("a", 1.0, 1.0): {"clip_i": 0.8, "objective": 0.6},
        ("b", 1.0, 1.0): {"clip_i": 0.6, "objective": 0.4},
        ("a", 0.5, 1.0): {"clip_i": 0.7, "objective": 0.7},
        ("b", 0.5, 1.0): {"clip_i": 0.5, "objective": 0.5},
    }
    d = diagnose({(1.0, 1.0): 0.5, (0.5, 1.0): 0.6}, [1.0], [0.5, 1.0], [1.0])
    flat = flat_metrics(scores, d, random_weights=True)
    assert strength_label(0.5, 1) == "unet0.5_te1.0"
    assert flat["eval/clip_i"] == pytest.approx(0.7)
    assert flat["eval/clip_i@unet0.5_te1.0"] == pytest.approx(0.6)
    assert flat["eval/ckpt/a/clip_i"] == 0.8 and flat["eval/ckpt/b/objective"] == 0.4
    assert flat["eval/objective"] == pytest.approx(0.5)
    assert flat["eval/best_unet_strength"] == 0.5
    assert flat["eval/random_weights"] == 1.0


def test_every_metric_name_has_an_mlflow_safe_form():
    d = diagnose({(1.0, 1.0): 0.5, (0.5, 0.5): 0.4}, [0.5], [], [])
    flat = flat_metrics(
        {("a b", 1.0, 1.0): {"clip_i": 1.0}, ("a b", 0.5, 0.5): {"clip_i": 0.5}}, d, False
    )
    assert "eval/clip_i@unet0.5_te0.5" in flat
    safe = {mlflow_safe_name(k) for k in flat}
    assert len(safe) == len(flat)
    assert all(re.fullmatch(r"[/\w.\- :]+", k) for k in safe)


def test_an_epoch_scored_at_one_strength_has_no_strength_reading():
    d = diagnose({(1.0, 1.0): 0.5}, [0.25, 0.5, 1.0, 1.5], [0.5, 1.0], [0.5, 1.0])
    assert d.state == "not measured" and d.best_strength is None
    assert d.best_unet_strength is None
    assert d.metrics() == {}
    flat = flat_metrics({("a", 1.0, 1.0): {"objective": 0.5}}, d, False)
    assert flat["eval/objective"] == 0.5
    assert "eval/best_strength" not in flat and "eval/training_state" not in flat
    # The UNet x TE grid is read even when the diagonal is not.
    pairs = {(1.0, 1.0): 0.5, (0.5, 1.0): 0.7}
    d = diagnose(pairs, [1.0], [0.5, 1.0], [1.0])
    assert d.state == "not measured" and d.best_unet_strength == 0.5


def test_the_list_of_grid_only_metrics_matches_what_a_diagnosis_writes():
    from evaluators.objective import DIAGNOSIS_METRICS

    d = diagnose(_grid(0.5, 1.0), [0.5, 1.0], [0.5, 1.0], [0.5, 1.0, 2.0])
    assert set(d.metrics()) == set(DIAGNOSIS_METRICS)


def test_a_peak_smaller_than_anything_noticeable_reads_as_well_trained():
    """0.650 at 0.75 against 0.644 at 1.0 (the world demo's best trial) is a tie: a fifth of
    the smallest objective change users notice is 0.01."""
    strengths = (0.5, 0.75, 1.0, 1.25, 1.5)
    curve = {0.5: 0.586, 0.75: 0.650, 1.0: 0.644, 1.25: 0.601, 1.5: 0.593}
    tied = diagnose({(s, s): v for s, v in curve.items()}, strengths)
    assert (tied.best_strength, tied.state) == (1.0, "well-trained")
    curve[0.75] = 0.656  # 0.012 above 1.0: a real peak
    peak = diagnose({(s, s): v for s, v in curve.items()}, strengths)
    assert (peak.best_strength, peak.state) == (0.75, "over-trained")

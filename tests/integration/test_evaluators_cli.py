"""`python -m evaluators` on existing files, and the evaluation callback in a training run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from evaluators import cli
from evaluators.callback import EvaluationCallback
from evaluators.model_cache import ModelPool
from trainer.loop.callbacks import TrainingCallback
from trainer.models.ldm_format import save_single_file
from trainer.models.tiny import build_tiny_components
from trainer.networks.kohya_format import save_lora
from trainer.networks.lora import apply_lora
from trainer.run import train_from_config

PROJECT = Path(__file__).resolve().parents[2]
CHEAP = (
    'eval.prompts=["a photo of {trigger}"]',
    "eval.steps=2",
    "eval.strengths=[0.5,1.0]",
    "eval.unet_strengths=[0.5,1.0]",
    "eval.te_strengths=[1.0]",
    "eval.max_reference_images=2",
    "eval.val_max_images=2",
    "eval.val_timesteps=[500]",
)


def _lora_file(path: Path, seed: int) -> Path:
    c = build_tiny_components(seed=0)
    cfg = {
        "type": "lora",
        "dim": 4,
        "alpha": 2,
        "conv_dim": None,
        "conv_alpha": None,
        "dropout": 0.0,
        "train_unet": True,
        "train_text_encoder": True,
    }
    net = apply_lora(c.unet, c.text_encoder, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules:
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.3)
    save_lora(path, net.kohya_state_dict(), {"ss_network_module": "networks.lora"})
    return path


def test_cli_scores_files_on_two_checkpoints_and_writes_metrics_and_grids(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    files = [_lora_file(runs / f"penny-{e:06d}.safetensors", seed=e) for e in (4, 8)]
    other = save_single_file(build_tiny_components(seed=3), tmp_path / "other.safetensors")
    pool = ModelPool()
    code = cli.main(
        [
            *map(str, files),
            f"eval.checkpoints=[tiny,{{path:{other},single_file_config:tiny}}]",
            f"paths.project_dir={PROJECT}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *CHEAP,
        ],
        pool,
    )
    out = capsys.readouterr().out
    assert code == 0
    header, *rows = out.splitlines()[:3]
    assert header.split()[:4] == ["file", "epoch", "objective", "fidelity"]
    assert rows[0].split()[:2] == ["penny-000004.safetensors", "4"]
    assert rows[1].split()[:2] == ["penny-000008.safetensors", "8"]
    assert "RANDOM-WEIGHT" in out
    evaldir = runs / "eval"
    metrics = json.loads((evaldir / "epoch-000008/metrics-RANDOM_WEIGHTS.json").read_text())
    assert metrics["checkpoints"] == ["tiny", "other"] and metrics["random_weights"] is True
    assert "eval/ckpt/other/clip_i" in metrics["metrics"]
    assert "eval/clip_t@unet0.5_te1.0" in metrics["metrics"]
    assert len(metrics["cells"]) == 2 * 3  # checkpoints x {(0.5,0.5), (1,1), (0.5,1)}
    summary = json.loads((evaldir / "summary.json").read_text())
    assert summary["best_epoch"] in (4, 8) and len(summary["files"]) == 2
    for name in (
        "epoch_x_strength-tiny-RANDOM_WEIGHTS.png",
        "epoch-000004/unet_x_te-other-RANDOM_WEIGHTS.png",
    ):
        with Image.open(evaldir / name) as grid:
            assert grid.width > 64 and grid.height > 64
    assert sorted(pool.load_counts.values()) == [1, 1]  # each base once for both files


def test_cli_never_overwrites_an_evaluation_already_in_its_folder(tmp_path, capsys):
    """A sweep trial's folder: its files and its own eval/ (metrics JSON, grids). Rescoring
    writes to eval-2 (then eval-3), names both folders, and leaves eval/ byte for byte."""
    trial = tmp_path / "trial-0"
    trial.mkdir()
    lora = _lora_file(trial / "penny-000004.safetensors", seed=4)
    own = trial / "eval" / "epoch-000004"
    own.mkdir(parents=True)
    (own / "metrics.json").write_text('{"the trial": "own"}')
    Image.new("RGB", (4, 4)).save(own / "unet_x_te-tiny.png")
    before = {p: p.read_bytes() for p in (trial / "eval").rglob("*") if p.is_file()}
    args = [str(lora), f"paths.project_dir={PROJECT}", f"paths.cache_dir={tmp_path / 'c'}"]
    for n in (2, 3):
        assert cli.main([*args, *CHEAP]) == 0
        out = capsys.readouterr().out
        assert f"{trial / 'eval'} already holds an evaluation" in out
        assert f"this one goes to {trial / f'eval-{n}'}" in out
        assert any((trial / f"eval-{n}" / "epoch-000004").glob("metrics*.json"))
    after = {p: p.read_bytes() for p in (trial / "eval").rglob("*") if p.is_file()}
    assert after == before


def test_cli_bad_input_is_an_error_message_and_exit_code_2(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing.safetensors")]) == 2
    assert "LoRA file(s) not found" in capsys.readouterr().err
    lora = _lora_file(tmp_path / "a.safetensors", seed=1)
    code = cli.main(
        [
            str(lora),
            f"eval.checkpoints=[{tmp_path / 'nope.safetensors'}]",
            f"paths.project_dir={PROJECT}",
        ]
    )
    assert code == 2
    assert "eval.checkpoints[0].path: file not found" in capsys.readouterr().err


def test_cli_help_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "evaluators", "--help"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert done.returncode == 0 and "LORA_FILE" in done.stdout


class SeesResults(TrainingCallback):
    """Reads the run's scores of each saved epoch, as the Optuna reporter does."""

    def __init__(self):
        self.seen = {}

    def on_epoch_scored(self, record):
        if record.path is not None:
            self.seen[record.epoch] = record.scores.get(record.epoch).get("eval/objective")


def test_callback_evaluates_every_nth_and_the_last_epoch_during_training(compose, tmp_path):
    cfg = compose(
        "train.max_train_epochs=3", "train.batch_size=2", "eval.every_n_epochs=2", *CHEAP
    )
    evaluation = EvaluationCallback(cfg)
    after = SeesResults()
    result = train_from_config(cfg, callbacks=[after, evaluation])  # the reader first
    assert sorted(evaluation.results) == [2, 3]
    assert result.scores.rows() == evaluation.results
    assert after.seen[1] is None and after.seen[2] is not None and after.seen[3] is not None
    assert evaluation.best_epoch in (2, 3)
    best = max(evaluation.results.values(), key=lambda m: m["eval/objective"])
    assert evaluation.best_objective == best["eval/objective"]
    out = tmp_path / "out" / "eval"
    assert (out / "epoch-000003" / "metrics-RANDOM_WEIGHTS.json").is_file()
    with Image.open(evaluation.files[3]["grid_epoch_x_strength/tiny"]) as grid:
        assert grid.height > 2 * 64  # two epoch rows

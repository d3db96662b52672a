"""Everything checkable is checked before the model loads: the VAE file, the optimizer's own
argument rules, the scoring models, and a folder with no class token. Each used to surface
only after the base model had loaded or a whole epoch had trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sweeper.checks import run_problems
from trainer.errors import ConfigError
from trainer.validate import validate_run

PROJECT_DIR = Path(__file__).resolve().parents[2]


def problems_of(cfg) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_run(cfg, extra_checks=[run_problems])
    return err.value.problems


def test_a_missing_vae_file_is_named_as_the_vae(compose, tmp_path):
    missing = tmp_path / "nope.safetensors"
    (problem,) = problems_of(compose(f"model.vae={missing}"))
    assert problem.startswith(f"model.vae: '{missing}' (the VAE) does not exist")
    assert "allowed: null (the base model's own VAE)" in problem


def test_a_corrupt_or_foreign_vae_file_is_refused_before_loading(compose, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors header")
    (problem,) = problems_of(compose(f"model.vae={corrupt}"))
    assert f"model.vae: '{corrupt}' (the VAE) is not a readable .safetensors file" in problem
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    (problem,) = problems_of(compose(f"model.vae={lora}"))
    assert f"model.vae: '{lora}' holds no VAE weights" in problem
    folder = tmp_path / "vae_folder"
    folder.mkdir()
    (problem,) = problems_of(compose(f"model.vae={folder}"))
    assert "(the VAE) has no config.json or vae/config.json" in problem


def test_a_vae_file_with_vae_weights_passes(compose, tmp_path):
    vae = tmp_path / "vae.safetensors"
    weights = {"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)}
    save_file(weights, str(vae))
    validate_run(compose(f"model.vae={vae}"), extra_checks=[run_problems])


def test_optimizer_arguments_are_checked_by_the_optimizer_class(compose):
    problems = problems_of(compose("+optimizer.args.betas=abc", "+optimizer.args.weight_decay=-1"))
    assert len(problems) == 2
    betas, decay = sorted(problems)
    assert betas.startswith("optimizer.args.betas: 'abc' is refused by torch.optim.adamw.AdamW")
    assert "TypeError" in betas
    assert decay == (
        "optimizer.args.weight_decay: -1 is refused by torch.optim.adamw.AdamW (AdamW): "
        "ValueError: Invalid weight_decay value: -1"
    )
    (problem,) = problems_of(compose("+optimizer.args.betas=[0.9,2.0]"))
    assert "optimizer.args.betas: (0.9, 2.0)" in problem and "Invalid beta parameter" in problem


def test_missing_scoring_models_are_named(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    no_config = tmp_path / "dino"
    no_config.mkdir()
    problems = problems_of(
        compose(f"eval.clip_model={tmp_path / 'clip'}", f"eval.dino_model={no_config}")
    )
    assert problems == [
        f"eval.clip_model: '{tmp_path / 'clip'}' does not exist (the scoring model); allowed: "
        "'tiny', a hub id 'owner/name', or a local transformers model directory",
        f"eval.dino_model: {no_config} has no config.json, so it is not a transformers model "
        "directory (the scoring model); allowed: 'tiny', a hub id 'owner/name', or a local "
        "transformers model directory",
    ]
    (problem,) = problems_of(compose("eval.clip_model=nobody-has/this-model-xyz"))
    assert "'nobody-has/this-model-xyz' is not in the local Hugging Face cache" in problem
    # Not used by eval.metrics: not checked.
    cfg = compose(f"eval.dino_model={no_config}", "eval.metrics=[clip_i,val_loss]")
    validate_run(cfg, extra_checks=[run_problems])


def _folder(root: Path, name: str, captions: bool) -> Path:
    folder = root / "img" / name
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(folder / f"{i}.png")
        if captions:
            (folder / f"{i}.txt").write_text("a photo of sks cat")
    return root / "img"


def test_a_folder_without_class_token_and_uncaptioned_images_is_refused(compose, tmp_path):
    data = _folder(tmp_path, "5_", captions=False)
    problems = problems_of(compose(f"data.dir={data}", "eval.trigger=sks"))
    assert len(problems) == 1
    assert f"data.dir: training data folder '{data}' has unusable entries" in problems[0]
    assert f"'{data / '5_'}': the folder name gives no class token" in problems[0]
    assert "2 image(s) have no caption file (e.g. '0.png')" in problems[0]


def test_without_class_token_the_evaluation_needs_a_trigger(compose, tmp_path):
    data = _folder(tmp_path, "5_", captions=True)
    (problem,) = problems_of(compose(f"data.dir={data}"))
    assert problem.startswith(f"eval.trigger: null, and no folder of data.dir '{data}' gives")
    validate_run(compose(f"data.dir={data}", "eval.trigger=sks"), extra_checks=[run_problems])
    # Scored by the training loss: no evaluation, no trigger needed.
    cfg = compose(f"data.dir={data}", "search.metrics=[train/epoch_loss]",
                  "search.directions=[minimize]")  # fmt: skip
    validate_run(cfg, extra_checks=[run_problems])


def test_cli_reports_them_all_at_once_before_loading(tmp_path):
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweeper",
         f"model.vae={tmp_path / 'vae.safetensors'}",
         "+optimizer.args.weight_decay=-1", f"eval.clip_model={tmp_path / 'clip'}",
         f"hydra.run.dir={run_dir}", "tracking.enabled=false"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "3 problem(s)" in proc.stderr and "Traceback" not in proc.stderr
    for key in ("model.vae:", "optimizer.args.weight_decay:", "eval.clip_model:"):
        assert key in proc.stderr
    assert not list(run_dir.glob("*.safetensors"))
    # Refused before the model libraries are imported (-X importtime lists every import).
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()}
    assert "torch" in imported  # the optimizer's class checked its arguments
    assert not {"diffusers", "mlflow", "transformers"} & imported

"""Issues 14 and 15: a tracked Optuna sweep on ``model=tiny_sdxl`` (evaluated on the SDXL
pipeline) and on ``model=tiny_flux`` (evaluated on the Flux pipeline with the flow-matching
Euler sampler), and each one's report.

One sweep per family (``python -m sweeper -m`` in a subprocess: 2 trials of 2 epochs of 2
steps, the default scorers on random tiny scoring models, the pipeline sampling 2 steps at two
UNet / transformer and two text-encoder strengths) serves every test of the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf
from PIL import Image
from skimage import data as skdata

from trainer.networks.kohya_format import read_lora

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parents[2]

# What each family's sweep must write: the kohya prefixes of its file, keys that name its
# modules as kohya does, and its metadata.
FAMILIES = {
    "sdxl": SimpleNamespace(
        model="tiny_sdxl",
        parts={"unet", "te1", "te2"},
        keys=["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"],
        base_model_version="sdxl_base_v1-0",
        architecture="stable-diffusion-xl-v1-base/lora",
    ),
    "flux": SimpleNamespace(
        model="tiny_flux",
        parts={"unet", "te1"},
        keys=[
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
            "lora_unet_single_blocks_0_linear1.lora_up.weight",
        ],
        base_model_version="flux1",
        architecture="flux-1-dev/lora",
    ),
}


def _dataset(root: Path) -> Path:
    """Two images of different aspect ratios (two buckets: two sets of SDXL size conditioning,
    two packed-token counts for Flux)."""
    folder = root / "img" / "1_cat"
    folder.mkdir(parents=True)
    for name, size in (("chelsea", (64, 64)), ("coffee", (64, 48))):
        Image.fromarray(getattr(skdata, name)()).resize(size).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a photo of sks cat")
    return root / "img"


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LORASWEEP_CACHE_DIR": str(root / "cache"),
        "LORASWEEP_RUNS_DIR": str(root / "runs"),
        "LORASWEEP_MLRUNS_DIR": str(root / "mlruns"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _run(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module", params=sorted(FAMILIES), ids=sorted(FAMILIES))
def sweep(request, tmp_path_factory):
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"{request.param}_sweep")
    data_dir, env = _dataset(root), _env(root)
    sweep_dir = root / "sweep"
    _run(
        [
            "-m", "sweeper", "-m",
            f"model={family.model}",
            "search.n_trials=2",
            "search.sampler.seed=0",
            f"data.dir={data_dir}",
            "train.max_train_epochs=2",
            "train.progress_bar=false",
            f"hydra.sweep.dir={sweep_dir}",
            "eval.steps=2",
            "eval.strengths=[0.5,1.0]",
            "eval.unet_strengths=[0.5,1.0]",
            "eval.te_strengths=[0.5,1.0]",
        ],
        env,
    )  # fmt: skip
    summary = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optuna_results.yaml"))
    storage = f"sqlite:///{root / 'runs' / 'lorasweep_optuna.db'}"
    report = root / "report.html"
    _run(["-m", "sweeper.report", "--storage", storage, "--out", str(report)], env)
    return SimpleNamespace(
        study=optuna.load_study(study_name=summary["study_name"], storage=storage),
        summary=summary,
        report=report,
        client=MlflowClient(f"sqlite:///{root / 'mlruns'}/mlflow.db"),
        family=request.param,
        expect=family,
    )


def test_every_trial_completes_with_scores(sweep):
    trials = sweep.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert sweep.summary["states"] == {"COMPLETE": 2}
    for trial in trials:
        assert trial.value is not None and trial.value == trial.value  # not NaN
        assert sorted(trial.intermediate_values) == [1, 2]  # reported each epoch


def test_the_best_file_is_a_kohya_lora_of_its_family(sweep):
    state_dict, meta = read_lora(sweep.summary["best"]["best_file"])
    assert {k.split("_")[1] for k in state_dict} == sweep.expect.parts
    for key in sweep.expect.keys:
        assert key in state_dict, key
    assert meta["ss_base_model_version"] == sweep.expect.base_model_version
    assert meta["modelspec.architecture"] == sweep.expect.architecture
    assert meta["modelspec.resolution"] == "64x64"
    assert meta["ss_network_dim"] == str(sweep.summary["best"]["params"]["network.dim"])


def test_mlflow_child_runs_hold_the_family_evaluation(sweep):
    experiment = sweep.client.get_experiment_by_name(sweep.study.study_name)
    runs = sweep.client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2
    for child in children:
        assert child.data.params["model.family"] == sweep.family
        assert child.data.params["model.name"] == sweep.expect.model
        history = sweep.client.get_metric_history(child.info.run_id, "eval/val_loss")
        assert [m.step for m in history] == [1, 2]
        assert all(0.0 < m.value < 10.0 for m in history)


def test_report_names_the_reproduction_command(sweep):
    page = sweep.report.read_text()
    assert f"model={sweep.expect.model}" in page
    assert "eval/objective" in page

"""The config read once into typed settings: before any model library is imported, defaults
taken from the YAML files only, and the typed spec handed to the builders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainer.errors import ConfigError
from trainer.settings.defaults import yaml_defaults
from trainer.settings.network import LoraSpec, LycorisSpec
from trainer.settings.optimizer import OptimizerSettings
from trainer.settings.spec import RunSpec, read_run_spec
from trainer.validate import validate_run

PROJECT_DIR = Path(__file__).resolve().parents[2]
ML_LIBRARIES = ("torch", "diffusers", "transformers", "mlflow", "peft", "lycoris")


def test_cli_reports_bad_values_before_any_model_library_is_imported(tmp_path):
    env = {**os.environ, "LORASWEEP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweeper", "+network.dimm=4",
         "network.dim=0", "optimizer.lr=-1", "eval.steps=0", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    # Every problem at once, each with its key, value and what is allowed.
    assert "invalid configuration (4 problem(s))" in proc.stderr
    for says in (
        "network.dimm: unknown key (value 4)",
        "network.dim = 0; must be an integer >= 1",
        "optimizer.lr: -1 must be > 0",
        "eval.steps: 0 is not allowed; allowed: an integer >= 1",
    ):
        assert says in proc.stderr
    # -X importtime lists every imported module as "import time: ... | <module>".
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()}
    assert "trainer.settings.spec" in imported
    assert not imported & set(ML_LIBRARIES), sorted(imported & set(ML_LIBRARIES))


def test_reading_the_settings_imports_no_model_library():
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from sweeper.__main__ import read_settings\n"
        f"with initialize_config_dir(config_dir={str(PROJECT_DIR / 'conf')!r}, "
        "version_base='1.3'):\n"
        f"    cfg = compose('config', overrides=['paths.project_dir={PROJECT_DIR}', "
        "'paths.output_dir=/tmp/x', 'optimizer=prodigy', 'network=loha'])\n"
        "spec = read_settings(cfg)\n"
        "print(type(spec).__name__, spec.network.type, spec.optimizer.name)\n"
        f"print(sorted(m for m in {ML_LIBRARIES!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True,
        timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["RunSpec loha Prodigy", "[]"]


def test_validate_run_returns_the_typed_spec_of_every_group(compose):
    spec = validate_run(compose("network=locon", "optimizer=prodigy", "scheduler=cosine"))
    assert isinstance(spec, RunSpec)
    assert isinstance(spec.network, LoraSpec) and spec.network.conv_dim == 4
    assert spec.network.alpha == 1.0  # conf/network/locon.yaml
    assert isinstance(spec.optimizer, OptimizerSettings) and spec.optimizer.adaptive
    assert spec.optimizer.args["betas"] == (0.9, 0.999)  # YAML lists become tuples
    assert spec.scheduler.name == "cosine" and spec.train.mode == "lora" and spec.mode is None
    assert spec.data.buckets.resolution == (64, 64)  # model.resolution of the tiny model
    assert spec.model.path == "tiny" and spec.run_name == "locon_Prodigy"
    with pytest.raises(Exception, match="frozen"):
        spec.train.batch_size = 2  # read-only, as the config is


def test_the_mode_is_the_selected_groups(compose):
    spec = validate_run(compose("train=textual_inversion"))
    assert spec.train.mode == "textual_inversion" and spec.mode.tokens == ("<chelsea-cat>",)
    dreambooth = validate_run(compose("train=dreambooth")).mode
    assert dreambooth.learning_rate == 2e-6 and dreambooth.num_class_images == 100
    assert isinstance(validate_run(compose("network=lokr")).network, LycorisSpec)


def test_read_run_spec_lists_the_problems_of_every_group_at_once(compose):
    with pytest.raises(ConfigError) as err:
        read_run_spec(compose("network.alpha=100", "optimizer.lr=-1", "train.batch_size=0",
                              "scheduler.name=step", "model.clip_skip=0"))  # fmt: skip
    keys = sorted(p.split(" ")[0].rstrip(":") for p in err.value.problems)
    assert keys == ["model.clip_skip", "network.alpha", "optimizer.lr", "scheduler.name",
                    "train.batch_size"]  # fmt: skip


def test_defaults_come_from_the_yaml_files_only():
    from evaluators.settings import read_eval_settings
    from sweeper.search_config import read_settings

    eval_yaml = yaml_defaults("eval")
    settings = read_eval_settings({})
    assert settings.prompts == tuple(eval_yaml["prompts"])
    assert settings.negative_prompt == eval_yaml["negative_prompt"]
    assert settings.fidelity_weight == eval_yaml["objective"]["fidelity_weight"]
    search = OmegaConf.to_container(OmegaConf.load(PROJECT_DIR / "conf/search/default.yaml"))
    search.pop("max_failure_rate")
    search.update(directions=["maximize"], metrics=["eval/objective"])
    assert (
        read_settings(search).max_failure_rate
        == 0.5
        == yaml_defaults("search")["max_failure_rate"]
    )


def test_the_eval_samplers_are_the_ones_the_evaluators_build():
    from evaluators.samplers import SAMPLER_NAMES
    from evaluators.settings import SAMPLERS

    assert SAMPLERS == SAMPLER_NAMES


def test_the_builders_take_the_typed_spec(compose):
    import torch

    from trainer.optim.optimizers import build_optimizer
    from trainer.optim.schedulers import build_scheduler

    spec = validate_run(compose("optimizer.unet_lr=3e-4", "scheduler=linear"))
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer(spec.optimizer, params, [torch.nn.Parameter(torch.zeros(2))])
    assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 5e-5]
    schedule = build_scheduler(spec.scheduler, optimizer, 10, spec.optimizer)
    assert schedule.get_last_lr() == [3e-4, 5e-5]
